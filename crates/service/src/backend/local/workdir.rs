//! `LOCAL_WORK_DIR` holds every runner's copy, output and metadata, and start-up acts on
//! the metadata it finds there (adopting and cleaning up). Anyone else who could write in
//! it could plant metadata for the service to act on, so it must be private: created
//! 0700, and an existing one owned by another user or writable by group or others is
//! refused rather than used.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::geteuid;

use super::permanent;
use crate::backend::BackendError;

/// Bits that let someone other than the owner add, rename or remove entries.
const FOREIGN_WRITE: u32 = 0o022;

/// Creates the work directory (mode `mode`) or checks an existing one, then gives it
/// exactly `mode` and, when `group` is set, that group. `mode` is 0700, or 0710 with
/// `LOCAL_RUN_AS`, whose user must pass through it to reach its own copy.
pub(super) fn ensure_private(dir: &Path, mode: u32, group: Option<u32>) -> Result<(), BackendError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| permanent("create LOCAL_WORK_DIR", dir, e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| permanent("inspect LOCAL_WORK_DIR", dir, e))?;
    check_private(dir, &meta)?;
    if let Some(gid) = group.filter(|g| *g != meta.gid()) {
        std::os::unix::fs::chown(dir, None, Some(gid))
            .map_err(|e| permanent("give LOCAL_WORK_DIR to the LOCAL_RUN_AS group", dir, e))?;
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| permanent("make LOCAL_WORK_DIR private", dir, e))?;
    }
    Ok(())
}

/// Refuses a work directory that is not a real directory of the service's own user that
/// only that user can write to.
fn check_private(dir: &Path, meta: &std::fs::Metadata) -> Result<(), BackendError> {
    let refuse = |why: String| {
        BackendError::Permanent(format!(
            "LOCAL_WORK_DIR {} {why}; the service only uses a private directory of its own",
            dir.display()
        ))
    };
    if meta.file_type().is_symlink() {
        return Err(refuse(
            "is a symbolic link: give the directory it points to".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    let me = geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "is owned by uid {}, not by the service's user (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & FOREIGN_WRITE != 0 {
        return Err(refuse(format!(
            "is writable by group or others (mode {:o}): chmod 700 it",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}
