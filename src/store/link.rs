//! How a work-tree copy is made from a store object.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a reflink failed: the store's filesystem cannot clone.
static NO_REFLINK: AtomicBool = AtomicBool::new(false);

/// The ways to materialise an object in the work tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Copy-on-write clone (btrfs, XFS); instant and independent.
    Reflink,
    /// Hard link to the object; instant, made read-only.
    Hardlink,
    /// Symbolic link into the store; instant, read-only.
    Symlink,
    /// Plain copy; independent and writable.
    Copy,
}

/// Create `dst` (which must not exist) from `object`, a verified object of
/// `size` bytes when known (a manifest entry's). `None` means the default: reflink where the filesystem
/// supports it, else copy. Returns the mode actually used.
pub(crate) fn materialize(
    object: &Path,
    dst: &Path,
    mode: Option<LinkMode>,
    exec: bool,
    size: Option<u64>,
) -> std::io::Result<LinkMode> {
    let writable = if exec { 0o755 } else { 0o644 };
    // A link shares the object's read-only, non-executable mode bits, so an
    // executable file is always copied.
    let mode = match mode {
        Some(LinkMode::Hardlink | LinkMode::Symlink) if exec => Some(LinkMode::Copy),
        m => m,
    };
    match mode {
        None if NO_REFLINK.load(Ordering::Relaxed) => {
            copy(object, dst, writable, size)?;
            Ok(LinkMode::Copy)
        }
        None => match reflink_copy::reflink(object, dst) {
            Ok(()) => {
                fs::set_permissions(dst, fs::Permissions::from_mode(writable))?;
                Ok(LinkMode::Reflink)
            }
            Err(_) => {
                // Remember: one failed clone per process, not one per file.
                NO_REFLINK.store(true, Ordering::Relaxed);
                let _ = fs::remove_file(dst);
                copy(object, dst, writable, size)?;
                Ok(LinkMode::Copy)
            }
        },
        Some(LinkMode::Reflink) => {
            reflink_copy::reflink(object, dst)?;
            fs::set_permissions(dst, fs::Permissions::from_mode(writable))?;
            Ok(LinkMode::Reflink)
        }
        Some(LinkMode::Copy) => {
            copy(object, dst, writable, size)?;
            Ok(LinkMode::Copy)
        }
        Some(LinkMode::Hardlink) => {
            // Objects are stored 0444, so the link is read-only too.
            fs::hard_link(object, dst)?;
            Ok(LinkMode::Hardlink)
        }
        Some(LinkMode::Symlink) => {
            let abs = fs::canonicalize(object)?;
            std::os::unix::fs::symlink(abs, dst)?;
            Ok(LinkMode::Symlink)
        }
    }
}

fn copy(object: &Path, dst: &Path, mode: u32, size: Option<u64>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Created with its final mode (not the object's 0444), so no chmod.
    let mut src = fs::File::open(object)?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dst)?;
    // copy_file_range directly: `io::copy` would first stat both files and
    // query their flags, four syscalls per file, a tenth of a checkout of
    // many small files. When the size is known, no call is spent finding
    // the end of the file.
    let mut copied = 0u64;
    while size.is_none_or(|s| copied < s) {
        match rustix::fs::copy_file_range(&src, None, &out, None, 1 << 30) {
            Ok(0) => break,
            Ok(n) => copied += n as u64,
            // Not supported between these files: copy through memory.
            Err(_) if copied == 0 => {
                copied = std::io::copy(&mut src, &mut out)?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(size) = size
        && copied != size
    {
        return Err(std::io::Error::other(format!(
            "{}: expected {size} bytes, the object had {copied}",
            object.display()
        )));
    }
    Ok(())
}
