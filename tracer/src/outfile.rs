//! The files cfstrace writes for its user (captures, plots): private and never through a
//! link. A capture names every throttled cgroup, its processes and their command lines, so it
//! is created mode 0600, and an existing file is made 0600 before anything is written to it; a
//! symlink at the path is refused (`O_NOFOLLOW`), so a link planted in a shared directory
//! cannot turn a root-run `record` into a write to a file of the planter's choosing.
use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Owner read and write, nobody else.
pub const PRIVATE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum OutFileError {
    #[error("{} is a symbolic link: refusing to write through it (give the file's own path)", path.display())]
    Symlink { path: PathBuf },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make {} private (mode 0600): {source}", path.display())]
    Private {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Create (or truncate) `path` for writing: mode 0600, not following a symlink at `path`
/// (`O_CREAT|O_TRUNC|O_WRONLY|O_NOFOLLOW|O_CLOEXEC`). A regular file that already existed with
/// another mode is made 0600 (`fchmod`) before the caller writes; a device or FIFO (`-o
/// /dev/null`) is written to as it is, its mode untouched.
pub fn create_private(path: &Path) -> Result<File, OutFileError> {
    // std opens with O_CLOEXEC and O_WRONLY|O_CREAT|O_TRUNC from these options.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| {
            // O_NOFOLLOW fails with ELOOP when the last component is a link.
            let link = source.raw_os_error() == Some(libc::ELOOP)
                && path.symlink_metadata().is_ok_and(|m| m.is_symlink());
            if link {
                OutFileError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                OutFileError::Create {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let private = |source| OutFileError::Private {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(private)?;
    let kind = meta.file_type();
    let special = kind.is_char_device() || kind.is_block_device() || kind.is_fifo();
    if !special && meta.permissions().mode() & 0o7777 != PRIVATE_MODE {
        file.set_permissions(Permissions::from_mode(PRIVATE_MODE))
            .map_err(private)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_and_existing_files_end_up_0600() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.jsonl");
        create_private(&new).unwrap().write_all(b"x").unwrap();
        assert_eq!(mode(&new), PRIVATE_MODE);

        let old = dir.path().join("old.jsonl");
        std::fs::write(&old, b"what was there before").unwrap();
        std::fs::set_permissions(&old, Permissions::from_mode(0o644)).unwrap();
        create_private(&old).unwrap().write_all(b"y").unwrap();
        assert_eq!(mode(&old), PRIVATE_MODE);
        assert_eq!(std::fs::read(&old).unwrap(), b"y", "not truncated");
    }

    #[test]
    fn a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep me").unwrap();
        std::fs::set_permissions(&target, Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = create_private(&link).unwrap_err();
        assert!(matches!(err, OutFileError::Symlink { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&link.display().to_string()) && text.contains("symbolic link"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert_eq!(mode(&target), 0o644);
        // A dangling link is refused too (O_CREAT would otherwise create its target).
        let dangling = dir.path().join("dangling.jsonl");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(matches!(
            create_private(&dangling),
            Err(OutFileError::Symlink { .. })
        ));
        assert!(!dir.path().join("nowhere").exists());
    }

    /// `-o` on a FIFO (or a device such as /dev/null) writes into it and leaves its mode
    /// alone: it is not the user's file to make private. A FIFO, not /dev/null, so a bug
    /// cannot change a shared device's mode.
    #[test]
    fn a_fifo_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        std::fs::set_permissions(&fifo, Permissions::from_mode(0o644)).unwrap();
        // A reader first, so opening the write end does not block.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        create_private(&fifo).unwrap().write_all(b"z").unwrap();
        assert_eq!(mode(&fifo), 0o644);
    }

    #[test]
    fn other_failures_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/c.jsonl");
        let err = create_private(&p).unwrap_err();
        assert!(matches!(err, OutFileError::Create { .. }), "{err:?}");
        assert!(err.to_string().contains("no/such/dir/c.jsonl"), "{err}");
    }
}
