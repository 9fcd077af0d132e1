//! The static holder binary run by every outer container (built by build.rs).
use std::{os::unix::fs::PermissionsExt, path::Path};

use crate::error::{Error, Result};

const HOLDER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ums-holder"));

/// Writes the holder into an outer rootfs at `spec::HOLDER_PATH`.
pub fn install(outer_rootfs: &Path) -> Result<()> {
    let target = outer_rootfs.join(crate::spec::HOLDER_PATH.trim_start_matches('/'));
    std::fs::create_dir_all(outer_rootfs).map_err(Error::io("create outer rootfs"))?;
    std::fs::write(&target, HOLDER).map_err(Error::io(format!("write {}", target.display())))?;
    release_pages();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io("chmod holder"))
}

/// Drops the holder's pages from the shim's resident set after the copy: they are file-backed
/// and read-only (the page cache keeps them), and a shim per pod should stay small.
fn release_pages() {
    crate::resident::drop_range(HOLDER.as_ptr(), HOLDER.len());
}
