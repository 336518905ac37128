//! Checks for paths that come from untrusted input (pointer files, manifests
//! pulled from a remote). Every such path goes through here before it is
//! joined to the project root.

use std::path::{Component, Path, PathBuf};

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
}

/// A `/`-separated relative path made only of normal components.
pub fn check_relative(p: &str) -> Result<(), PathError> {
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
pub fn check_file_name(p: &str) -> Result<(), PathError> {
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
pub fn check_no_symlink_ancestors(root: &Path, path: &Path) -> Result<(), PathError> {
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
