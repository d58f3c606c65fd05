//! Temporary files that a killed run cannot leave behind, or that the next run recognises.
//!
//! Where the file system allows it, a temporary file is anonymous (`O_TMPFILE`): it has no
//! name until it is linked into place complete, so a `kill -9` leaves nothing at all. Where
//! it does not, the file gets a name starting with [`PREFIX`] and holds an advisory lock for
//! as long as its owner lives. Scratch directories are named and locked the same way. Every
//! run removes the entries of that name it finds unlocked (their owner died): [`remove_stale`].

use std::fs::{self, File, TryLockError};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};

/// What every temporary file and directory of ours is called at the start.
pub const PREFIX: &str = ".bakery-tmp-";

/// How old an unlocked entry must be before it counts as stale: the instant between creating
/// a named file and locking it must not look like a dead owner.
const UNLOCKED_GRACE: Duration = Duration::from_secs(2);
/// Where locks do not work (some network file systems), age alone decides.
const UNLOCKABLE_AGE: Duration = Duration::from_secs(3600);

/// A temporary file in a directory, anonymous if possible.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    dir: PathBuf,
    /// The name, for a named temporary file (removed on drop unless persisted).
    named: Option<PathBuf>,
}

fn random_name() -> String {
    let mut bytes = [0u8; 8];
    // A failing getrandom leaves zeros; create_new then retries with the pid and a counter.
    let _ = getrandom::fill(&mut bytes);
    format!("{PREFIX}{}-{}", std::process::id(), hex::encode(bytes))
}

/// Creates a file with a fresh [`PREFIX`] name in `dir`, exclusively.
fn create_named(dir: &Path) -> io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..16 {
        let path = dir.join(random_name());
        match File::options().read(true).write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()))
}

impl TempFile {
    /// A temporary file in `dir` (which must exist), mode 0644.
    pub fn new_in(dir: &Path) -> io::Result<Self> {
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => return Ok(Self { file: File::from(fd), dir: dir.to_owned(), named: None }),
            // Not supported by this file system (or kernel): fall back to a locked name.
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(e.into()),
        }
        let (file, path) = create_named(dir)?;
        // Best effort: where locks are unsupported, stale files are recognised by age.
        let _ = file.try_lock();
        Ok(Self { file, dir: dir.to_owned(), named: Some(path) })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, for writing.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// A path that opens this file while it is open: its name, or `/proc/self/fd/N` for an
    /// anonymous one.
    pub fn path(&self) -> PathBuf {
        match &self.named {
            Some(p) => p.clone(),
            None => {
                use std::os::fd::AsRawFd;
                PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            }
        }
    }

    /// Gives the file a [`PREFIX`] name in its directory (if it has none yet) and returns it,
    /// so that putting it in place is a plain `rename(2)`, which cannot fail half-way.
    pub fn into_named(mut self) -> io::Result<NamedTemp> {
        // Dropping `self` afterwards removes nothing: the name moves to the result.
        let path = match self.named.take() {
            Some(p) => p,
            None => {
                let mut last = None;
                let mut linked = None;
                // Locked before it has a name, so no cleanup can ever see it unlocked.
                let _ = self.file.try_lock();
                for _ in 0..16 {
                    let path = self.dir.join(random_name());
                    match link_anonymous(&self.file, &path) {
                        Ok(()) => {
                            linked = Some(path);
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                        Err(e) => return Err(e),
                    }
                }
                linked.ok_or_else(|| last.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()))?
            }
        };
        let _ = self.file.try_lock();
        // A duplicate shares the open file description, and with it the lock.
        Ok(NamedTemp { path: Some(path), _file: self.file.try_clone()? })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = &self.named {
            let _ = fs::remove_file(p);
        }
    }
}

/// Links an `O_TMPFILE` file at `path` (fails if `path` exists). Through `/proc/self/fd`,
/// which needs no privilege, unlike `AT_EMPTY_PATH`.
fn link_anonymous(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match rustix::fs::linkat(CWD, proc_path.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) => {
            // No /proc: try the direct way, which works with CAP_DAC_READ_SEARCH.
            rustix::fs::linkat(file.as_fd(), "", CWD, path, AtFlags::EMPTY_PATH).map_err(Into::into)
        }
        Err(e) => Err(e.into()),
    }
}

/// A complete temporary file with a [`PREFIX`] name, locked, removed on drop unless renamed.
#[derive(Debug)]
pub struct NamedTemp {
    path: Option<PathBuf>,
    _file: File,
}

impl NamedTemp {
    /// Its current name.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("set until renamed")
    }

    /// Renames it to `dest`, replacing what is there.
    pub fn rename(mut self, dest: &Path) -> io::Result<()> {
        let from = self.path.take().expect("set until renamed");
        fs::rename(&from, dest).inspect_err(|_| self.path = Some(from))
    }
}

/// Moves the file at `path` to a fresh [`PREFIX`] name in its directory, returning it as a
/// temporary file: removed when dropped, unless renamed back.
pub fn move_aside(path: &Path) -> io::Result<NamedTemp> {
    let file = File::open(path)?;
    let _ = file.try_lock();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let aside = dir.join(random_name());
    // rename(2) would replace an existing name: link first, so a name clash is an error.
    fs::hard_link(path, &aside)?;
    if let Err(e) = fs::remove_file(path) {
        let _ = fs::remove_file(&aside);
        return Err(e);
    }
    Ok(NamedTemp { path: Some(aside), _file: file })
}

impl Drop for NamedTemp {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = fs::remove_file(p);
        }
    }
}

/// A scratch directory with a [`PREFIX`] name, locked while it lives, removed on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    _lock: File,
}

impl ScratchDir {
    /// A fresh scratch directory in `parent` (which must exist).
    pub fn new_in(parent: &Path) -> io::Result<Self> {
        let mut last = None;
        for _ in 0..16 {
            let path = parent.join(random_name());
            match fs::create_dir(&path) {
                Ok(()) => {
                    let lock = File::open(&path)?;
                    let _ = lock.try_lock();
                    return Ok(Self { path, _lock: lock });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Whether the entry at `path` was left by a run that is gone: nobody holds its lock (and it
/// is not brand new), or locks do not work here and it is over an hour old.
fn is_stale(path: &Path) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else { return false };
    let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
    if meta.is_symlink() {
        return age >= UNLOCKED_GRACE;
    }
    let Ok(file) = File::open(path) else { return age >= UNLOCKABLE_AGE };
    match file.try_lock() {
        Ok(()) => age >= UNLOCKED_GRACE,
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(_)) => age >= UNLOCKABLE_AGE,
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|m| SystemTime::now().duration_since(m).is_ok_and(|a| a >= age))
}

/// What `tempfile` named the cache's temporary files before this module existed.
pub fn legacy_cache_temp(name: &str) -> bool {
    name.starts_with(".tmp")
}

/// What `bakery create` named an image's temporary file before this module existed:
/// `.<image>.raw.XXXXXX.tmp`.
pub fn legacy_image_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp") && name.contains(".raw.")
}

/// Removes the temporary files and scratch directories of ours in `dir` that their owner
/// left behind (unlocked, or where locks do not work over an hour old); returns what was
/// removed. A missing `dir` has none.
pub fn remove_stale(dir: &Path) -> io::Result<Vec<PathBuf>> {
    remove_stale_with(dir, |_| false)
}

/// Like [`remove_stale`], and also entries for which `legacy` is true: temporary files named
/// by older versions, which never held a lock, and count as stale once they are an hour old.
pub fn remove_stale_with(dir: &Path, legacy: impl Fn(&str) -> bool) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let stale = if name.starts_with(PREFIX) {
            is_stale(&path)
        } else if legacy(&name) {
            is_stale(&path) && older_than(&path, UNLOCKABLE_AGE)
        } else {
            false
        };
        if !stale {
            continue;
        }
        let gone = if entry.file_type()?.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        match gone {
            Ok(()) => removed.push(path),
            // Another run cleaned it up first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn an_anonymous_file_has_no_name_until_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TempFile::new_in(dir.path()).unwrap();
        t.file_mut().write_all(b"complete").unwrap();
        assert_eq!(fs::read(t.path()).unwrap(), b"complete", "readable through its path");
        if t.named.is_none() {
            assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        }
        let named = t.into_named().unwrap();
        assert!(named.path().file_name().unwrap().to_string_lossy().starts_with(PREFIX));
        named.rename(&dir.path().join("out")).unwrap();
        assert_eq!(names(dir.path()), ["out"]);
        assert_eq!(fs::read(dir.path().join("out")).unwrap(), b"complete");
        // Dropped without being put in place: gone.
        drop(TempFile::new_in(dir.path()).unwrap().into_named().unwrap());
        assert_eq!(names(dir.path()), ["out"]);
    }

    #[test]
    fn only_unlocked_leftovers_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let live = TempFile::new_in(dir.path()).unwrap().into_named().unwrap();
        let scratch = ScratchDir::new_in(dir.path()).unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        // A dead run's leftovers: same names, nobody holding them.
        let dead_file = dir.path().join(format!("{PREFIX}dead"));
        fs::write(&dead_file, b"partial").unwrap();
        let dead_dir = dir.path().join(format!("{PREFIX}deaddir"));
        fs::create_dir_all(dead_dir.join("x")).unwrap();
        let fresh = dir.path().join(format!("{PREFIX}fresh"));
        fs::write(&fresh, b"").unwrap();
        for p in [&dead_file, &dead_dir] {
            File::open(p).unwrap().set_modified(old).unwrap();
        }
        for p in [live.path(), scratch.path()] {
            File::open(p).unwrap().set_modified(old).unwrap();
        }
        fs::write(dir.path().join("kubernetes.raw"), b"x").unwrap();
        let mut removed = remove_stale(dir.path()).unwrap();
        removed.sort();
        assert_eq!(removed, [dead_file, dead_dir]);
        let left = names(dir.path());
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left.contains(&"kubernetes.raw".to_owned()) && left.contains(&format!("{PREFIX}fresh")));
        assert!(remove_stale(&dir.path().join("missing")).unwrap().is_empty());
    }
}
