//! The one I/O error that names what was being done and to which path.
//!
//! `std::io::Error` says "No such file or directory" and nothing else; every
//! module's error enum wraps this instead (`Io(#[from] FsError)`,
//! transparent), so a message always reads `<op> <path>: <cause>` and the
//! cause stays in the error chain (the CLI looks for a broken pipe there).
//! A leaf module: it depends on nothing else in the crate.

use std::path::{Path, PathBuf};

/// `op` of `path` failed with `source`.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct FsError {
    /// What was being done: `read`, `create`, `rename`, ...
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    pub fn new(op: &'static str, path: &Path, source: std::io::Error) -> FsError {
        FsError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The underlying error's kind.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

/// Attach an operation and a path to an `io::Error`:
/// `fs::read(p).ctx("read", p)?`.
pub trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, FsError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, FsError> {
        self.map_err(|source| FsError::new(op, path, source))
    }
}

/// The same as a closure, for `map_err`: `.map_err(io("read", p))`.
pub fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::new(op, path, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_operation_path_and_cause_and_keeps_the_cause() {
        let p = Path::new("/nonexistent/recsys/x");
        let e = std::fs::read(p).ctx("read", p).expect_err("missing");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        let msg = e.to_string();
        assert!(
            msg.starts_with("read /nonexistent/recsys/x: "),
            "message: {msg}"
        );
        let cause = std::error::Error::source(&e).expect("cause kept");
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
    }
}
