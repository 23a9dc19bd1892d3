//! One process per data directory: the directory is checked, created if
//! missing, and locked with an exclusive lock on its `LOCK` file.

use std::io;
use std::path::Path;

use super::fs::{FileSystem, LockGuard};
use crate::error::{Error, Result};

/// Name of the lock file inside the data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Makes sure `dir` is a usable directory (creating it if missing) and
/// takes its lock; the lock holds until the guard is dropped.
pub(crate) fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> Result<LockGuard> {
    let bad = |reason: String| Error::BadDirectory {
        path: dir.to_path_buf(),
        reason,
    };
    match fs.is_dir(dir) {
        Ok(true) => {}
        Ok(false) => return Err(bad("it exists and is not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs
            .create_dir_all(dir)
            .map_err(|e| bad(format!("it cannot be created: {e}")))?,
        Err(e) => return Err(bad(format!("it cannot be read: {e}"))),
    }
    match fs.lock(&dir.join(LOCK_FILE)) {
        Ok(guard) => Ok(guard),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Error::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(bad(format!("its lock file cannot be opened: {e}")))
        }
        Err(e) => Err(Error::io(
            format!("cannot lock {}", dir.join(LOCK_FILE).display()),
            e,
        )),
    }
}
