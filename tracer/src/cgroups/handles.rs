//! A cgroup's path from its id without walking the hierarchy: kernfs file handles are the
//! node id, so `open_by_handle_at` + readlink names it.
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::model::escape::os_str;

/// kernfs' file handle type (include/linux/exportfs.h FILEID_KERNFS): the handle is the id.
const FILEID_KERNFS: i32 = 0xfe;

/// What a lookup by file handle says about one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ByHandle {
    /// Its path relative to the mount (`/` for the root).
    Found(String),
    /// The kernel says no such node (ESTALE/ENOENT), it was removed while we looked, or it
    /// lies outside what this mount shows (a cgroup namespace): a walk would not find it either.
    Gone,
    /// Handles do not work here (no CAP_DAC_READ_SEARCH, not kernfs, old kernel) or a transient
    /// error (EMFILE, ENOMEM): only a walk can tell.
    Failed,
}

/// Resolve one id without a walk: kernfs (cgroup v1 and v2 hierarchies) exports file handles
/// that are the node id, so open_by_handle_at + readlink names it. Needs CAP_DAC_READ_SEARCH.
/// `mount_dir` is the mount point, opened once.
pub(super) fn path_by_handle(mount_dir: &fs::File, mount: &Path, id: u64) -> ByHandle {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: KernfsHandle is `struct file_handle` with an 8-byte f_handle, as handle_bytes says.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_dir.as_raw_fd(),
            (&raw mut handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::ESTALE | libc::ENOENT) => ByHandle::Gone,
            _ => ByHandle::Failed,
        };
    }
    // SAFETY: fd was just returned to us and is owned by nobody else.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let Ok(target) = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return ByHandle::Failed;
    };
    // A node removed after the open reads as "<path> (deleted)" (or its name is already taken
    // by a new cgroup): the path must still lead to this very id.
    if !fs::metadata(&target).is_ok_and(|m| m.ino() == id) {
        return ByHandle::Gone;
    }
    // A name that is not UTF-8 keeps its bytes as `\xNN` (never lost, never U+FFFD).
    match target.strip_prefix(mount) {
        Ok(rel) => ByHandle::Found(format!("/{}", os_str(rel.as_os_str()))),
        Err(_) => ByHandle::Gone,
    }
}
