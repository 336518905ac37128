//! Directory manifests: one object listing a directory's files (sorted
//! relative paths, digests, sizes, modes). Its digest names the directory.
//!
//! Format (text, one file per line):
//! ```text
//! recsys-manifest 1
//! <digest> <size> <mode, octal> <relative/path>
//! ```
//! A manifest read from a store is untrusted: every path is checked.

use super::{Digest, Result, StoreError};
use crate::paths::{check_not_owned, check_relative};

const HEADER: &str = "recsys-manifest 1";
/// The first bytes of every manifest object (its header line).
pub const MAGIC: &[u8] = b"recsys-manifest 1\n";

/// `<digest> <size> <mode octal> <path>\n`, written without the
/// formatting machinery (a manifest of 20,000 files is built on every
/// `status`).
fn push_line(s: &mut String, digest: &Digest, size: u64, mode: u32, path: &str) {
    use std::fmt::Write;
    digest.push_hex(s);
    s.push(' ');
    let _ = write!(s, "{size}");
    match mode {
        0o644 => s.push_str(" 644 "),
        0o755 => s.push_str(" 755 "),
        _ => {
            let _ = write!(s, " {mode:o} ");
        }
    }
    s.push_str(path);
    s.push('\n');
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `/`-separated path relative to the directory.
    pub path: String,
    pub digest: Digest,
    pub size: u64,
    /// Unix permission bits; only 0o644 and 0o755 are recorded.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Build from entries in any order.
    pub fn new(mut entries: Vec<Entry>) -> Manifest {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest { entries }
    }

    pub(crate) fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::with_capacity(32 + self.entries.len() * 100);
        s.push_str(HEADER);
        s.push('\n');
        for e in &self.entries {
            push_line(&mut s, &e.digest, e.size, e.mode, &e.path);
        }
        s.into_bytes()
    }

    /// The digest of the manifest of `entries` (path, digest, size, mode),
    /// which must be sorted by path, without building the manifest.
    pub(crate) fn digest_of_sorted<'a>(
        entries: impl ExactSizeIterator<Item = (&'a str, &'a Digest, u64, u32)>,
    ) -> Digest {
        let mut s = String::with_capacity(32 + entries.len() * 100);
        s.push_str(HEADER);
        s.push('\n');
        for (path, digest, size, mode) in entries {
            push_line(&mut s, digest, size, mode, path);
        }
        Digest::of(s.as_bytes())
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// Parse and validate a manifest object named `digest`.
    pub fn parse(digest: &Digest, bytes: &[u8]) -> Result<Manifest> {
        let bad = |line: usize, reason: String| StoreError::BadManifest {
            digest: *digest,
            line,
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad(0, "not UTF-8".into()))?;
        let mut lines = text.split_terminator('\n');
        if lines.next() != Some(HEADER) {
            return Err(bad(1, format!("first line must be {HEADER:?}")));
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let mut parts = line.splitn(4, ' ');
            let (Some(d), Some(size), Some(mode), Some(path)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(n, "want `<digest> <size> <mode> <path>`".into()));
            };
            let digest: Digest = d
                .parse()
                .map_err(|e: super::BadDigest| bad(n, e.to_string()))?;
            let size: u64 = size
                .parse()
                .map_err(|_| bad(n, format!("bad size {size:?}")))?;
            let mode = u32::from_str_radix(mode, 8)
                .ok()
                .filter(|m| *m == 0o644 || *m == 0o755)
                .ok_or_else(|| bad(n, format!("bad mode {mode:?} (want 644 or 755)")))?;
            check_relative(path).map_err(|e| bad(n, e.to_string()))?;
            // Checked out, such a file would become git's or recsys's own
            // (`.git/config`, a `.gitignore`, a pointer file).
            check_not_owned(path, false).map_err(|e| bad(n, e.to_string()))?;
            if let Some(prev) = entries.last() {
                if prev.path.as_str() >= path {
                    return Err(bad(n, "paths are not strictly sorted".into()));
                }
                if path.starts_with(&format!("{}/", prev.path)) {
                    return Err(bad(
                        n,
                        format!("{path:?} is inside the file {:?}", prev.path),
                    ));
                }
            }
            entries.push(Entry {
                path: path.to_string(),
                digest,
                size,
                mode,
            });
        }
        Ok(Manifest { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str) -> Entry {
        Entry {
            path: path.into(),
            digest: Digest::of(path.as_bytes()),
            size: 3,
            mode: 0o644,
        }
    }

    #[test]
    fn round_trip_sorted() {
        // Root-only names are ordinary inside a directory.
        let m = Manifest::new(vec![e("b/c"), e("a"), e("store"), e("log/x")]);
        let b = m.to_bytes();
        assert_eq!(Manifest::parse(&Digest::of(&b), &b).unwrap(), m);
        let m = Manifest::new(vec![e("b/c"), e("a")]);
        assert_eq!(m.entries[0].path, "a");
        let b = m.to_bytes();
        assert_eq!(Manifest::parse(&Digest::of(&b), &b).unwrap(), m);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let d = Digest::of(b"x");
        let good = Digest::of(b"y");
        for (text, want) in [
            ("nope\n".to_string(), "first line"),
            (format!("{HEADER}\n{good} 3 644 ../../etc/passwd\n"), "`..`"),
            (format!("{HEADER}\n{good} 3 644 /etc/passwd\n"), "absolute"),
            (format!("{HEADER}\n{good} 3 4755 x\n"), "bad mode"),
            (format!("{HEADER}\n{good} x 644 x\n"), "bad size"),
            (format!("{HEADER}\nzz 3 644 x\n"), "digest"),
            (
                format!("{HEADER}\n{good} 3 644 b\n{good} 3 644 a\n"),
                "sorted",
            ),
            (
                format!("{HEADER}\n{good} 3 644 a\n{good} 3 644 a/b\n"),
                "inside the file",
            ),
            (format!("{HEADER}\n{good} 3\n"), "want"),
            (
                format!("{HEADER}\n{good} 3 644 .git/config\n"),
                "belongs to git",
            ),
            (
                format!("{HEADER}\n{good} 3 644 sub/.git\n"),
                "belongs to git",
            ),
            (
                format!("{HEADER}\n{good} 3 644 a/.gitignore\n"),
                "belongs to git",
            ),
            (format!("{HEADER}\n{good} 3 644 b.recsys\n"), "pointer file"),
        ] {
            let err = Manifest::parse(&d, text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }
}
