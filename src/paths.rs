//! Checks for paths that come from untrusted input (pointer files, manifests
//! pulled from a remote). Every such path goes through here before it is
//! joined to the project root.

use std::path::{Component, Path, PathBuf};

/// The extension of pointer files (`workspace::pointer::EXT`): defined
/// here, at the bottom, because every path check needs it.
pub(crate) const POINTER_EXT: &str = ".recsys";

/// Why a relative path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("absolute paths are not allowed: {0:?}")]
    Absolute(String),
    #[error("path leaves its directory through `..`: {0:?}")]
    ParentDir(String),
    #[error("path has an empty, `.` or control-character component: {0:?}")]
    BadComponent(String),
    #[error("{path} resolves outside the project through the symlink {link}")]
    SymlinkEscape { path: PathBuf, link: PathBuf },
    #[error("{} is a symlink; a pointer file must be a regular file", .0.display())]
    SymlinkPointer(PathBuf),
    #[error("{path:?} names {name:?}, which belongs to {owner}; recsys never tracks or writes it")]
    Reserved {
        path: String,
        name: String,
        owner: &'static str,
    },
}

/// Names that belong to git or recsys wherever they appear: git's
/// repository (`.git` is a nested repository or a submodule's gitfile at any
/// depth), the `.gitignore` files recsys writes beside artifacts (git reads
/// them at every level), and pointer files (`*.recsys`, at any level; a path
/// inside one cannot be anything else's either).
fn owned_anywhere(name: &str) -> Option<&'static str> {
    if name == ".git" {
        Some("git")
    } else if name == ".gitignore" {
        Some("git (recsys keeps its entries)")
    } else if name.ends_with(POINTER_EXT) {
        Some("recsys (a pointer file)")
    } else {
        None
    }
}

/// Names that belong to recsys only at the project root: its marker
/// directory (which ends like a pointer file, so is refused everywhere
/// anyway), the store, the lineage index (with its WAL, shared memory and
/// set-aside copies) and the request log. Below the root they are ordinary
/// names: `data/log/` or `models/store` are a user's artifacts.
fn owned_at_root(name: &str) -> Option<&'static str> {
    match name {
        ".recsys" | "store" | "log" => Some("recsys"),
        n if n.starts_with("lineage.db") => Some("recsys (the lineage index)"),
        _ => None,
    }
}

/// Refuse a path (relative, `/`-separated, already [`check_relative`]) that
/// is or lies inside a file or directory git or recsys owns. `at_root`: the
/// path is relative to the project root (a pointer's artifact), not to a
/// directory artifact (a manifest entry), so root-only names count.
pub(crate) fn check_not_owned(p: &str, at_root: bool) -> Result<(), PathError> {
    for (i, part) in p.split('/').enumerate() {
        let owner = owned_anywhere(part).or(if i == 0 && at_root {
            owned_at_root(part)
        } else {
            None
        });
        if let Some(owner) = owner {
            return Err(PathError::Reserved {
                path: p.into(),
                name: part.into(),
                owner,
            });
        }
    }
    Ok(())
}

/// Whether a directory entry named `name` (at any depth below the root) is
/// never part of a directory artifact: `add` leaves it out and `checkout`
/// leaves it alone, as git leaves `.git` alone.
pub(crate) fn never_in_artifact(name: &str) -> bool {
    owned_anywhere(name).is_some()
}

/// A `/`-separated relative path made only of normal components.
pub(crate) fn check_relative(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.starts_with('/') || p.starts_with('\\') || p.contains(":\\") {
        return Err(PathError::Absolute(p.into()));
    }
    for part in p.split('/') {
        if part == ".." {
            return Err(PathError::ParentDir(p.into()));
        }
        if part.is_empty() || part == "." || part.chars().any(|c| c.is_control() || c == '\\') {
            return Err(PathError::BadComponent(p.into()));
        }
    }
    Ok(())
}

/// A single file name: no separators at all.
pub(crate) fn check_file_name(p: &str) -> Result<(), PathError> {
    check_relative(p)?;
    if p.contains('/') {
        return Err(PathError::BadComponent(p.into()));
    }
    Ok(())
}

/// Refuse `path` (inside `root`) if any existing ancestor between `root` and
/// `path` is a symlink: writing through it could land outside the project.
/// The last component itself may be a symlink (it gets replaced, not
/// followed).
pub(crate) fn check_no_symlink_ancestors(root: &Path, path: &Path) -> Result<(), PathError> {
    let rel = match path.strip_prefix(root) {
        Ok(r) => r,
        Err(_) => {
            return Err(PathError::SymlinkEscape {
                path: path.into(),
                link: root.into(),
            });
        }
    };
    let comps: Vec<Component> = rel.components().collect();
    let mut cur = root.to_path_buf();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        match c {
            Component::Normal(n) => cur.push(n),
            _ => {
                return Err(PathError::ParentDir(rel.display().to_string()));
            }
        }
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(PathError::SymlinkEscape {
                    path: path.into(),
                    link: cur,
                });
            }
            Ok(_) => {}
            Err(_) => break, // does not exist yet: nothing below can be a link
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_relative_paths_are_refused() {
        assert!(check_relative("a/b.csv").is_ok());
        assert_eq!(check_relative(""), Err(PathError::Empty));
        assert!(matches!(
            check_relative("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            check_relative("../x"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            check_relative("a/../../x"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            check_relative("a//b"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            check_relative("a/./b"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            check_relative("a\nb"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            check_relative("..\\x"),
            Err(PathError::BadComponent(_))
        ));
        assert!(check_file_name("x.csv").is_ok());
        assert!(check_file_name("d/x.csv").is_err());
    }

    #[test]
    fn git_and_recsys_names_are_refused_where_they_are_theirs() {
        // Anywhere: git's repository, .gitignore, pointer files and paths
        // inside them.
        for p in [
            ".git",
            ".git/config",
            "data/.git",
            "a/b/.git/HEAD",
            ".gitignore",
            "data/.gitignore",
            "x.csv.recsys",
            "data/x.recsys",
            "data/x.recsys/inner",
            // Ends like a pointer file, so it is one wherever it is.
            ".recsys",
            "data/.recsys",
        ] {
            for at_root in [true, false] {
                assert!(
                    matches!(check_not_owned(p, at_root), Err(PathError::Reserved { .. })),
                    "{p} at_root={at_root}"
                );
            }
        }
        // At the root only: recsys's own files.
        for p in [
            "store",
            "store/ab/cdef",
            "log",
            "log/requests/open-x.jsonl",
            "lineage.db",
            "lineage.db-wal",
            "lineage.db.corrupt-1",
        ] {
            let e = check_not_owned(p, true).expect_err(p);
            assert!(e.to_string().contains("recsys"), "{e}");
            assert!(check_not_owned(p, false).is_ok(), "{p} inside a directory");
        }
        for p in [
            "data/store",
            "data/log/x",
            "models/lineage.db",
            "a.gitignore.txt",
            "recsys",
            "x.recsys.csv",
        ] {
            assert!(check_not_owned(p, true).is_ok(), "{p}");
        }
        assert!(never_in_artifact(".git") && never_in_artifact("b.recsys"));
        assert!(!never_in_artifact("store") && !never_in_artifact("log"));
    }

    #[test]
    fn symlinked_ancestor_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("proj");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("out")).unwrap();
        assert!(check_no_symlink_ancestors(&root, &root.join("real/x")).is_ok());
        assert!(check_no_symlink_ancestors(&root, &root.join("new/dir/x")).is_ok());
        assert!(matches!(
            check_no_symlink_ancestors(&root, &root.join("out/x")),
            Err(PathError::SymlinkEscape { .. })
        ));
    }
}
