//! Scratch directories that outlive no run for long: a run killed with SIGKILL cannot remove
//! its own (a multi-gigabyte disk copy beside OUT, private extension copies in `$TMPDIR`),
//! so the next run removes them.
//!
//! Each directory is held under an exclusive `flock` for as long as its run lives; the lock
//! goes away with the process, however it ends. [`sweep`] removes the directories of our
//! own naming whose lock it can take, which are exactly those of dead runs. A run whose
//! fresh directory is swept in the instant between creating and locking it notices (the
//! path no longer names the directory it locked) and makes another.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// The prefix of the working copy beside OUT.
pub const STAGING_PREFIX: &str = ".composer-";
/// The prefix of private copies of extension images in `$TMPDIR`.
pub const EXTENSION_PREFIX: &str = "composer-extension-";
/// The prefix of decompressed inputs of `check` and `inspect` in `$TMPDIR`.
pub const INPUT_PREFIX: &str = "composer-input-";

/// A scratch directory, locked while it exists and removed on drop.
#[derive(Debug)]
pub struct ScratchDir {
    // Declared first so it is dropped (removed) while the lock below is still held.
    dir: tempfile::TempDir,
    _lock: File,
}

fn same_dir(path: &Path, locked: &File) -> io::Result<bool> {
    let (a, b) = (std::fs::symlink_metadata(path)?, locked.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn try_lock(dir: &Path) -> io::Result<Option<File>> {
    let f = File::open(dir)?;
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl ScratchDir {
    /// Creates and locks a directory `<prefix><random>` in `parent`.
    pub fn new_in(parent: &Path, prefix: &str) -> io::Result<Self> {
        for _ in 0..8 {
            let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
            match try_lock(dir.path()) {
                Ok(Some(lock)) if same_dir(dir.path(), &lock).unwrap_or(false) => return Ok(Self { dir, _lock: lock }),
                // Swept by another run before the lock was taken: try a new name.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "could not create a scratch directory in {} that stays (another process keeps removing them)",
            parent.display()
        )))
    }

    /// Creates and locks a directory `<prefix><random>` in `$TMPDIR`.
    pub fn new_temp(prefix: &str) -> io::Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the directories `<prefix>*` in `parent` that no live process holds, i.e. the
/// scratch left by runs that were killed. Best effort: what cannot be read or removed is
/// left alone (it may be someone else's). Returns what was removed.
pub fn sweep(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else { return removed };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix) && n.len() > prefix.len());
        if !ours || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(Some(lock)) = try_lock(&path) else { continue };
        if same_dir(&path, &lock).unwrap_or(false) && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// [`sweep`] of our prefixes in `$TMPDIR`.
pub fn sweep_temp() -> Vec<PathBuf> {
    let tmp = std::env::temp_dir();
    let mut removed = sweep(&tmp, EXTENSION_PREFIX);
    removed.extend(sweep(&tmp, INPUT_PREFIX));
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_directories_stay_and_dead_ones_go() {
        let parent = tempfile::tempdir().unwrap();
        let live = ScratchDir::new_in(parent.path(), "composer-test-").unwrap();
        std::fs::write(live.path().join("data"), b"x").unwrap();
        // What a killed run leaves: a directory of our naming that nobody locks.
        let dead = parent.path().join("composer-test-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("disk.raw"), b"y").unwrap();
        let other = parent.path().join("someone-else");
        std::fs::create_dir(&other).unwrap();

        assert_eq!(sweep(parent.path(), "composer-test-"), std::slice::from_ref(&dead));
        assert!(live.path().join("data").exists() && !dead.exists() && other.exists());
        let path = live.path().to_owned();
        drop(live);
        assert!(!path.exists());
        assert!(sweep(parent.path(), "composer-test-").is_empty());
    }
}
