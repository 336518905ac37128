//! How a work-tree copy is made from a store object.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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

/// Create `dst` (which must not exist) from `object`. `None` means the
/// default: reflink where the filesystem supports it, else copy. Returns the
/// mode actually used.
pub fn materialize(
    object: &Path,
    dst: &Path,
    mode: Option<LinkMode>,
    exec: bool,
) -> std::io::Result<LinkMode> {
    let writable = if exec { 0o755 } else { 0o644 };
    // A link shares the object's read-only, non-executable mode bits, so an
    // executable file is always copied.
    let mode = match mode {
        Some(LinkMode::Hardlink | LinkMode::Symlink) if exec => Some(LinkMode::Copy),
        m => m,
    };
    match mode {
        None => match reflink_copy::reflink(object, dst) {
            Ok(()) => {
                fs::set_permissions(dst, fs::Permissions::from_mode(writable))?;
                Ok(LinkMode::Reflink)
            }
            Err(_) => {
                let _ = fs::remove_file(dst);
                copy(object, dst, writable)?;
                Ok(LinkMode::Copy)
            }
        },
        Some(LinkMode::Reflink) => {
            reflink_copy::reflink(object, dst)?;
            fs::set_permissions(dst, fs::Permissions::from_mode(writable))?;
            Ok(LinkMode::Reflink)
        }
        Some(LinkMode::Copy) => {
            copy(object, dst, writable)?;
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

fn copy(object: &Path, dst: &Path, mode: u32) -> std::io::Result<()> {
    // std::fs::copy uses copy_file_range and copies the 0444 mode bits.
    fs::copy(object, dst)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
}
