//! Which directory a request is answered from.
//!
//! A release that `bakery publish` manages is a symlink `DIR -> DIR.generations/<serial>`
//! that a publish replaces with one `rename(2)`. Each request reads the link once and opens
//! that generation's directory; the file is then opened beneath that descriptor and the whole
//! response streams from the one file descriptor. A publish that swaps the link mid-download
//! therefore never mixes two generations in one response (committed generations are never
//! modified; an old one may be pruned, but an open descriptor keeps its bytes readable).
//! A plain directory (a mirror copied with rsync) is served with the same containment rules.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustix::fs::{AtFlags, FileType};

use super::files;
use super::generation::{DirId, Generation};

/// The release directory being served.
#[derive(Debug)]
pub enum Release {
    /// `link -> <link name>.generations/<serial>`, followed anew for every request.
    Managed {
        /// The release symlink.
        link: PathBuf,
        /// The directory holding the generations.
        store: PathBuf,
        /// The generation most recently served, with the files opened from it.
        current: RwLock<Option<Arc<Generation>>>,
    },
    /// A directory served as it is.
    Plain {
        /// The directory.
        dir: PathBuf,
    },
}

/// Why the release directory cannot be served at all.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Missing or unreadable.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
    /// Not something to serve.
    #[error("{}: {reason}", path.display())]
    Refused {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Why a request cannot be answered from the release right now (503).
#[derive(Debug, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The serial a link target names, if it has exactly the shape publish writes:
/// `<store name>/<10 digits>`.
fn serial_of(target: &[u8], store_name: &str) -> Option<u64> {
    let target = std::str::from_utf8(target).ok()?;
    let serial = target.strip_prefix(store_name)?.strip_prefix('/')?;
    (serial.len() == 10 && serial.bytes().all(|b| b.is_ascii_digit())).then(|| serial.parse().ok())?
}

impl Release {
    /// Looks at `path` once: a publish-managed symlink, or a plain directory. Anything else is
    /// refused, so a mistake shows at startup and not as 503s later.
    pub fn open(path: &Path) -> Result<Self, ReleaseError> {
        // `release/` would resolve the symlink instead of looking at it.
        let path: PathBuf = path.components().collect();
        let io_err = |cause| ReleaseError::Io { path: path.clone(), cause };
        let refused = |reason: String| ReleaseError::Refused { path: path.clone(), reason };
        let meta = std::fs::symlink_metadata(&path).map_err(io_err)?;
        let release = if meta.is_symlink() {
            let store = release_index::publish::generations_dir(&path)
                .ok_or_else(|| refused("give the release directory by name".into()))?;
            let store_name = store.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let target = std::fs::read_link(&path).map_err(io_err)?;
            if serial_of(target.as_os_str().as_encoded_bytes(), &store_name).is_none() {
                return Err(refused(format!(
                    "a symlink to '{}', but a release that bakery publish manages links to '{store_name}/<10-digit serial>'; to serve another directory, name it directly",
                    target.display()
                )));
            }
            Release::Managed { link: path.clone(), store, current: RwLock::new(None) }
        } else if meta.is_dir() {
            Release::Plain { dir: path.clone() }
        } else {
            return Err(refused("not a directory".into()));
        };
        let current = release.current().map_err(|e| refused(e.0))?;
        // A directory we cannot list is likely one we cannot read either; say so now.
        let dir = match (&release, current.serial) {
            (Release::Managed { store, .. }, Some(serial)) => store.join(format!("{serial:010}")),
            _ => path.clone(),
        };
        std::fs::read_dir(&dir).map_err(|cause| ReleaseError::Io { path: dir.clone(), cause })?;
        Ok(release)
    }

    /// The generation (or plain directory) to answer one request from.
    pub fn current(&self) -> Result<Arc<Generation>, Unavailable> {
        match self {
            Release::Plain { dir } => files::open_dir(dir)
                .map(|fd| Arc::new(Generation::plain(fd)))
                .map_err(|e| Unavailable(format!("{}: {e}", dir.display()))),
            Release::Managed { link, store, current } => {
                let store_name = store.file_name().unwrap_or_default().to_string_lossy();
                // Two publishes between reading the link and opening its target could prune
                // that generation; read the link again then.
                let mut attempts = 3;
                loop {
                    attempts -= 1;
                    let target = rustix::fs::readlink(link.as_path(), Vec::with_capacity(64))
                        .map_err(|e| Unavailable(format!("reading the release link {}: {e}", link.display())))?;
                    let serial = serial_of(target.as_bytes(), &store_name).ok_or_else(|| {
                        Unavailable(format!(
                            "the release link {} points to '{}', not to '{store_name}/<10-digit serial>'",
                            link.display(),
                            String::from_utf8_lossy(target.as_bytes())
                        ))
                    })?;
                    let path = store.join(format!("{serial:010}"));
                    let unavailable = |e: &dyn fmt::Display| Unavailable(format!("{}: {e}", path.display()));
                    let stat = match rustix::fs::statat(rustix::fs::CWD, &path, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat) => stat,
                        Err(rustix::io::Errno::NOENT) if attempts > 0 => continue,
                        Err(e) => return Err(unavailable(&e)),
                    };
                    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                        return Err(unavailable(&"not a directory"));
                    }
                    let id = DirId::of(&stat);
                    if let Some(g) = current.read().ok().and_then(|c| c.clone()) {
                        if g.serial == Some(serial) && g.id == Some(id) {
                            return Ok(g);
                        }
                    }
                    let fd = match files::open_dir_nofollow(&path) {
                        Ok(fd) => fd,
                        Err(e) if e.kind() == io::ErrorKind::NotFound && attempts > 0 => continue,
                        Err(e) => return Err(unavailable(&e)),
                    };
                    // Replaced between the stat and the open: look again.
                    match rustix::fs::fstat(&fd) {
                        Ok(s) if DirId::of(&s) == id => {}
                        _ if attempts > 0 => continue,
                        _ => return Err(unavailable(&"changed while being opened")),
                    }
                    let g = Arc::new(Generation::managed(fd, serial, id));
                    if let Ok(mut c) = current.write() {
                        *c = Some(g.clone());
                    }
                    return Ok(g);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn link_targets_must_have_publishs_shape() {
        let s = "release.generations";
        assert_eq!(serial_of(b"release.generations/0000000007", s), Some(7));
        for bad in [
            "release.generations/7",
            "release.generations/00000000007",
            "release.generations/000000000x",
            "./release.generations/0000000007",
            "/srv/release.generations/0000000007",
            "other.generations/0000000007",
            "release.generations/0000000007/",
            "release.generations/../0000000007",
        ] {
            assert_eq!(serial_of(bad.as_bytes(), s), None, "{bad}");
        }
    }

    #[test]
    fn follows_the_link_per_call_and_refuses_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("release");
        let store = dir.path().join("release.generations");
        std::fs::create_dir_all(store.join("0000000001")).unwrap();
        std::fs::create_dir_all(store.join("0000000002")).unwrap();
        symlink("release.generations/0000000001", &link).unwrap();
        let release = Release::open(&dir.path().join("release/")).unwrap();
        assert_eq!(release.current().unwrap().serial, Some(1));
        let staged = dir.path().join(".release.swap");
        symlink("release.generations/0000000002", &staged).unwrap();
        std::fs::rename(&staged, &link).unwrap();
        assert_eq!(release.current().unwrap().serial, Some(2));

        std::fs::remove_file(&link).unwrap();
        symlink("/tmp", &link).unwrap();
        assert!(release.current().unwrap_err().0.contains("points to '/tmp'"));
        let err = Release::open(&link).unwrap_err().to_string();
        assert!(err.contains("a symlink to '/tmp'") && err.contains("release.generations/<10-digit serial>"), "{err}");
        std::fs::remove_file(&link).unwrap();
        assert!(release.current().unwrap_err().0.contains("reading the release link"));
        symlink("release.generations/0000000009", &link).unwrap();
        assert!(release.current().unwrap_err().0.contains("0000000009"));
        assert!(Release::open(&link).is_err());

        let plain = Release::open(&store.join("0000000002")).unwrap();
        assert_eq!(plain.current().unwrap().serial, None);
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(Release::open(&dir.path().join("file")).unwrap_err().to_string().contains("not a directory"));
        assert!(Release::open(&dir.path().join("missing")).is_err());
    }
}
