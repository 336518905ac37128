//! Pointer files: the small, diff-friendly text files git tracks in place of
//! an artifact. A pointer file is untrusted input (it may come from anyone's
//! commit): parsing never panics, and errors name the file and line.
//!
//! ```text
//! # recsys pointer file: tracked by git; the bytes live in the store.
//! recsys-pointer: 1
//! path: ratings.csv
//! type: file
//! kind: dataset
//! name: dataset_1
//! digest: 3f0c...64 hex
//! size: 1048576
//! run: 9ab1...64 hex
//! ```
//! Directories add `files: <count>`; their digest names a manifest object.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::paths::{check_file_name, check_not_owned};
use crate::store::Digest;

pub(crate) const EXT: &str = crate::paths::POINTER_EXT;
const FORMAT: &str = "1";
const MAX_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dataset,
    Model,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Dataset => "dataset",
            Kind::Model => "model",
        }
    }

    /// Automatic version names are `<prefix><n>`.
    pub fn prefix(&self) -> &'static str {
        match self {
            Kind::Dataset => "dataset_",
            Kind::Model => "model_v",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "dataset" => Some(Kind::Dataset),
            "model" => Some(Kind::Model),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The artifact's file name, beside the pointer file.
    pub path: String,
    pub is_dir: bool,
    pub kind: Kind,
    pub name: String,
    pub digest: Digest,
    pub size: u64,
    pub files: Option<u64>,
    pub run: Option<Digest>,
}

/// A pointer file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct PointerError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    pub reason: String,
}

/// A version name: letters, digits, `_`, `-`, `.`; starting with a letter
/// or digit; at most 100 characters.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Pointer {
    pub(crate) fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str("# recsys pointer file: tracked by git; the bytes live in the store.\n");
        let _ = writeln!(s, "# Restore them with: recsys checkout {}{EXT}", self.path);
        let _ = writeln!(s, "recsys-pointer: {FORMAT}");
        let _ = writeln!(s, "path: {}", self.path);
        let _ = writeln!(s, "type: {}", if self.is_dir { "dir" } else { "file" });
        let _ = writeln!(s, "kind: {}", self.kind.as_str());
        let _ = writeln!(s, "name: {}", self.name);
        let _ = writeln!(s, "digest: {}", self.digest);
        let _ = writeln!(s, "size: {}", self.size);
        if let Some(f) = self.files {
            let _ = writeln!(s, "files: {f}");
        }
        if let Some(r) = &self.run {
            let _ = writeln!(s, "run: {r}");
        }
        s
    }

    /// Parse pointer file `file`: its path relative to the project root,
    /// which decides what the artifact beside it may be called and names
    /// the file in error messages.
    pub fn parse(file: &Path, bytes: &[u8]) -> Result<Pointer, PointerError> {
        let err = |line: usize, reason: String| PointerError {
            file: file.to_path_buf(),
            line,
            reason,
        };
        if bytes.len() > MAX_LEN {
            return Err(err(
                0,
                format!("larger than {MAX_LEN} bytes; not a pointer file"),
            ));
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let line = bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1;
                return Err(err(line, "not valid UTF-8".into()));
            }
        };
        let mut fields: [Option<(usize, &str)>; 9] = [None; 9];
        const KEYS: [&str; 9] = [
            "recsys-pointer",
            "path",
            "type",
            "kind",
            "name",
            "digest",
            "size",
            "files",
            "run",
        ];
        let mut last_line = 0;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            last_line = n;
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                return Err(err(
                    n,
                    format!("expected `key: value`, found {:?}", clip(line)),
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            let Some(slot) = KEYS.iter().position(|x| *x == k) else {
                return Err(err(n, format!("unknown key {:?}", clip(k))));
            };
            if fields[slot].is_some() {
                return Err(err(n, format!("duplicate key `{k}`")));
            }
            fields[slot] = Some((n, v));
        }
        let need = |slot: usize| {
            fields[slot].ok_or_else(|| err(last_line.max(1), format!("missing `{}`", KEYS[slot])))
        };
        let (n, v) = need(0)?;
        if v != FORMAT {
            return Err(err(
                n,
                format!(
                    "pointer format {:?} is not supported (want {FORMAT})",
                    clip(v)
                ),
            ));
        }
        let (n, path) = need(1)?;
        check_file_name(path).map_err(|e| {
            err(
                n,
                format!("`path` must be a plain file name beside the pointer file: {e}"),
            )
        })?;
        // The artifact sits beside the pointer: `file` is where the pointer
        // is, relative to the project root, so `path: store` is refused at
        // the root (recsys's store) and allowed in `data/`.
        let art = match file.parent().map(|d| d.to_string_lossy()) {
            Some(d) if !d.is_empty() => format!("{d}/{path}"),
            _ => path.to_string(),
        };
        check_not_owned(&art, true).map_err(|e| err(n, format!("`path` is refused: {e}")))?;
        let (n, ty) = need(2)?;
        let is_dir = match ty {
            "file" => false,
            "dir" => true,
            other => {
                return Err(err(
                    n,
                    format!("`type` must be file or dir, not {:?}", clip(other)),
                ));
            }
        };
        let (n, k) = need(3)?;
        let kind = Kind::parse(k).ok_or_else(|| {
            err(
                n,
                format!("`kind` must be dataset or model, not {:?}", clip(k)),
            )
        })?;
        let (n, name) = need(4)?;
        if !valid_name(name) {
            return Err(err(n, format!("bad version name {:?}", clip(name))));
        }
        let (n, d) = need(5)?;
        let digest: Digest = d
            .parse()
            .map_err(|e: crate::store::BadDigest| err(n, e.to_string()))?;
        let (n, s) = need(6)?;
        let size: u64 = s.parse().map_err(|_| {
            err(
                n,
                format!("`size` must be a whole number, not {:?}", clip(s)),
            )
        })?;
        let files = match fields[7] {
            None if is_dir => {
                return Err(err(
                    last_line.max(1),
                    "missing `files` for a directory".into(),
                ));
            }
            None => None,
            Some((n, _)) if !is_dir => {
                return Err(err(n, "`files` is only for directories".into()));
            }
            Some((n, f)) => Some(f.parse::<u64>().map_err(|_| {
                err(
                    n,
                    format!("`files` must be a whole number, not {:?}", clip(f)),
                )
            })?),
        };
        let run = match fields[8] {
            None => None,
            Some((n, r)) => Some(
                r.parse()
                    .map_err(|e: crate::store::BadDigest| err(n, e.to_string()))?,
            ),
        };
        Ok(Pointer {
            path: path.to_string(),
            is_dir,
            kind,
            name: name.to_string(),
            digest,
            size,
            files,
            run,
        })
    }
}

fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    crate::text::clip_to(s, 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Pointer {
        Pointer {
            path: "ratings.csv".into(),
            is_dir: false,
            kind: Kind::Dataset,
            name: "dataset_1".into(),
            digest: Digest::of(b"x"),
            size: 1,
            files: None,
            run: Some(Digest::of(b"run")),
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let t = p.to_text();
        assert_eq!(
            Pointer::parse(Path::new("a.recsys"), t.as_bytes()).unwrap(),
            p
        );
        let mut d = sample();
        d.is_dir = true;
        d.files = Some(3);
        d.run = None;
        assert_eq!(
            Pointer::parse(Path::new("a.recsys"), d.to_text().as_bytes()).unwrap(),
            d
        );
    }

    #[test]
    fn malformed_pointers_name_file_and_line() {
        let good = sample().to_text();
        let mut cases: Vec<(String, usize, &str)> = vec![
            (
                good.replace("path: ratings.csv", "path: ../../etc/passwd"),
                4,
                "plain file name",
            ),
            (
                good.replace("path: ratings.csv", "path: /etc/passwd"),
                4,
                "plain file name",
            ),
            (
                good.replace("path: ratings.csv", "path: sub/x"),
                4,
                "plain file name",
            ),
            (good.replace("kind: dataset", "kind: banana"), 6, "kind"),
            (good.replace("size: 1", "size: -1"), 9, "size"),
            (
                good.replace("name: dataset_1", "name: ../x"),
                7,
                "version name",
            ),
            (
                good.replace("recsys-pointer: 1", "recsys-pointer: 9"),
                3,
                "not supported",
            ),
            (
                good.replace("type: file", "type: file\nfiles: 3"),
                6,
                "only for directories",
            ),
            (
                good.replace("type: file", "type: dir"),
                10,
                "missing `files`",
            ),
            (good.replace("size: 1\n", ""), 9, "missing `size`"),
            (format!("{good}size: 2\n"), 11, "duplicate"),
            (format!("{good}colour: red\n"), 11, "unknown key"),
            (format!("{good}garbage\n"), 11, "key: value"),
        ];
        // Names git or recsys own, beside a pointer in `data/`: git's and
        // recsys's own files at any level; the root's only at the root.
        for name in [".git", ".gitignore", "other.recsys", "x.csv.recsys"] {
            cases.push((
                good.replace("path: ratings.csv", &format!("path: {name}")),
                4,
                "refused",
            ));
        }
        for (text, line, want) in cases {
            let e = Pointer::parse(Path::new("data/x.recsys"), text.as_bytes()).unwrap_err();
            assert_eq!(e.line, line, "{e} for\n{text}");
            assert!(e.reason.contains(want), "{e} should mention {want}");
            assert!(e.to_string().starts_with("data/x.recsys:"), "{e}");
        }
        for name in [
            ".git",
            "store",
            "lineage.db",
            "lineage.db-wal",
            ".recsys",
            "log",
            ".gitignore",
            "a.recsys",
        ] {
            let text = good.replace("path: ratings.csv", &format!("path: {name}"));
            let e = Pointer::parse(Path::new("x.recsys"), text.as_bytes()).unwrap_err();
            assert_eq!(e.line, 4, "{e}");
            assert!(e.to_string().contains("belongs to"), "{e}");
        }
        for name in ["store", "lineage.db", "log"] {
            let text = good.replace("path: ratings.csv", &format!("path: {name}"));
            let p = Pointer::parse(Path::new("data/x.recsys"), text.as_bytes());
            assert_eq!(
                p.map(|p| p.path).as_deref(),
                Ok(name),
                "data/{name} is the user's"
            );
        }
        // A pointer inside recsys's log directory names recsys's files.
        let e = Pointer::parse(Path::new("log/x.recsys"), good.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("belongs to recsys"), "{e}");
        let e = Pointer::parse(Path::new("p"), b"recsys-pointer: 1\n\xff\n").unwrap_err();
        assert_eq!((e.line, e.reason.as_str()), (2, "not valid UTF-8"));
        let e = Pointer::parse(Path::new("p"), b"").unwrap_err();
        assert!(e.reason.contains("missing"), "{e}");
        let big = vec![b'#'; MAX_LEN + 1];
        assert!(Pointer::parse(Path::new("p"), &big).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Pointer::parse(Path::new("p"), &bytes);
        }

        #[test]
        fn arbitrary_key_value_text_never_panics(text in "(recsys-pointer|path|type|kind|name|digest|size|files|run|#|x)?(: ?)?[ -~]{0,80}(\n[a-z-]{0,15}: [ -~./]{0,70}){0,12}") {
            let _ = Pointer::parse(Path::new("p"), text.as_bytes());
        }

        #[test]
        fn valid_pointers_round_trip(
            path in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,30}",
            name in "[a-z0-9][a-z0-9_.-]{0,30}",
            size in proptest::num::u64::ANY,
            files in proptest::option::of(proptest::num::u64::ANY),
            seed in proptest::num::u8::ANY,
        ) {
            proptest::prop_assume!(path != "." && path != "..");
            proptest::prop_assume!(crate::paths::check_not_owned(&path, true).is_ok());
            let p = Pointer {
                path,
                is_dir: files.is_some(),
                kind: if seed % 2 == 0 { Kind::Dataset } else { Kind::Model },
                name,
                digest: Digest::of(&[seed]),
                size,
                files,
                run: (seed % 3 == 0).then(|| Digest::of(b"run")),
            };
            let back = Pointer::parse(Path::new("p"), p.to_text().as_bytes());
            proptest::prop_assert_eq!(back, Ok(p));
        }
    }
}
