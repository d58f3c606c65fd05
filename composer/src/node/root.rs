//! The node's filesystem as the agent sees it: `/` on a node, or a directory holding a node's
//! root (tests, preparing a root offline with `--root`).
//!
//! Every path the plan names is a node path (`/etc/extensions/kubernetes.raw`); this maps it
//! under the root and changes it the way a power cut cannot tear: files through a temporary
//! file beside them that is synced and renamed over the old one, links as a new link renamed
//! over the old, and the directory synced after each rename so the rename itself survives.
//! Link targets stay node paths: they are resolved by the node, not by this machine.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sysext_model::ExtensionRelease;

use super::NodeError;

/// Where a node keeps its os-release, in the order systemd reads them.
pub const OS_RELEASE: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// A node's root directory.
#[derive(Clone, Debug)]
pub struct NodeRoot {
    dir: PathBuf,
    live: bool,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NodeError + '_ {
    move |cause| NodeError::Io { path: path.to_owned(), cause }
}

impl NodeRoot {
    /// The root at `dir`, which must be a directory; `/` (however spelt) is the running
    /// system, whose service manager the agent may talk to.
    pub fn open(dir: &Path) -> Result<Self, NodeError> {
        let canonical = fs::canonicalize(dir).map_err(io_err(dir))?;
        if !canonical.is_dir() {
            return Err(NodeError::Io { path: dir.to_owned(), cause: io::Error::other("not a directory") });
        }
        Ok(Self { live: canonical == Path::new("/"), dir: canonical })
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this is the running system (`/`).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Where node path `node` (absolute) is on this machine.
    pub fn path(&self, node: &str) -> PathBuf {
        self.dir.join(node.trim_start_matches('/'))
    }

    /// The node's os-release and the node path it was read from: `/etc/os-release`, else
    /// `/usr/lib/os-release` (an absolute link is followed inside the root).
    pub fn os_release(&self) -> Result<(String, ExtensionRelease), NodeError> {
        for node in OS_RELEASE {
            let mut path = self.path(node);
            if let Ok(target) = fs::read_link(&path) {
                if let Some(t) = target.to_str().filter(|t| t.starts_with('/')) {
                    path = self.path(t);
                }
            }
            match fs::read_to_string(&path) {
                Ok(text) => {
                    let parsed = ExtensionRelease::parse(&text).map_err(|e| NodeError::Io {
                        path: path.clone(),
                        cause: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                    })?;
                    return Ok((node.to_owned(), parsed));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(cause) => return Err(NodeError::Io { path, cause }),
            }
        }
        Err(NodeError::Io {
            path: self.path(OS_RELEASE[0]),
            cause: io::Error::new(io::ErrorKind::NotFound, "no /etc/os-release or /usr/lib/os-release in the root"),
        })
    }

    /// The node's systemd major version, from the name of its `libsystemd-shared-NNN.so`
    /// (the oldest when several are installed, so no rule of a newer systemd is assumed).
    pub fn systemd_version(&self) -> Option<u32> {
        crate::disk::target::SYSTEMD_LIB_DIRS
            .iter()
            .filter_map(|d| fs::read_dir(self.path(&format!("/usr{d}"))).ok())
            .flatten()
            .filter_map(|e| sysext_model::compat::systemd_version_of_library(&e.ok()?.file_name().to_string_lossy()))
            .min()
    }

    /// Creates directory `node` and its missing parents (0755); returns whether it had to.
    pub fn put_dir(&self, node: &str) -> Result<bool, NodeError> {
        let path = self.path(node);
        if path.is_dir() {
            return Ok(false);
        }
        let mut missing = vec![path.as_path()];
        let mut cur = path.parent();
        while let Some(p) = cur.filter(|p| !p.is_dir()) {
            missing.push(p);
            cur = p.parent();
        }
        for dir in missing.iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(cause) => return Err(NodeError::Io { path: dir.to_path_buf(), cause }),
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_err(dir))?;
            sync_parent(dir)?;
        }
        Ok(true)
    }

    /// Writes `contents` with permission bits `mode` to `node` through a synced temporary
    /// file renamed over it; returns false, writing nothing, when it already is exactly that.
    pub fn put_file(&self, node: &str, contents: &[u8], mode: u32) -> Result<bool, NodeError> {
        let path = self.path(node);
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if meta.is_file()
                && meta.permissions().mode() & 0o7777 == mode
                && fs::read(&path).is_ok_and(|old| old == contents)
            {
                return Ok(false);
            }
        }
        let dir = parent(&path)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", file_name(&path)))
            .suffix(".composer-new")
            .tempfile_in(dir)
            .map_err(io_err(dir))?;
        tmp.write_all(contents).map_err(io_err(tmp.path()))?;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
        tmp.as_file().sync_all().map_err(io_err(&path))?;
        tmp.persist(&path).map_err(|e| NodeError::Io { path: path.clone(), cause: e.error })?;
        sync_dir(dir)?;
        Ok(true)
    }

    /// Points the symbolic link `node` at `target`: a new link under a temporary name renamed
    /// over the old one, so the path never goes missing; returns false when it already
    /// pointed there.
    pub fn put_link(&self, node: &str, target: &str) -> Result<bool, NodeError> {
        let path = self.path(node);
        if fs::read_link(&path).is_ok_and(|t| t == Path::new(target)) {
            return Ok(false);
        }
        let dir = parent(&path)?;
        let tmp = dir.join(format!(".{}.composer-new", file_name(&path)));
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(cause) => return Err(NodeError::Io { path: tmp, cause }),
        }
        std::os::unix::fs::symlink(target, &tmp).map_err(io_err(&tmp))?;
        if let Err(cause) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(NodeError::Io { path, cause });
        }
        sync_dir(dir)?;
        Ok(true)
    }

    /// Moves the verified file `staged` (on the same filesystem) to `node`, replacing what is
    /// there, and syncs the directory.
    pub fn put_staged(&self, staged: &Path, node: &str) -> Result<(), NodeError> {
        let path = self.path(node);
        fs::rename(staged, &path).map_err(io_err(&path))?;
        sync_dir(parent(&path)?)
    }
}

fn parent(path: &Path) -> Result<&Path, NodeError> {
    path.parent().ok_or_else(|| NodeError::Io { path: path.to_owned(), cause: io::Error::other("has no parent") })
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Syncs directory `dir`, so the renames and creations in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), NodeError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn sync_parent(path: &Path) -> Result<(), NodeError> {
    sync_dir(parent(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::open(dir.path()).unwrap();
        assert!(!root.is_live());
        assert!(root.put_dir("/etc/composer").unwrap());
        assert!(!root.put_dir("/etc/composer").unwrap());
        assert!(root.put_file("/etc/composer/a", b"x", 0o644).unwrap());
        assert!(!root.put_file("/etc/composer/a", b"x", 0o644).unwrap());
        assert!(root.put_file("/etc/composer/a", b"x", 0o600).unwrap(), "mode differs");
        assert!(root.put_file("/etc/composer/a", b"y", 0o600).unwrap(), "contents differ");
        assert_eq!(fs::read(dir.path().join("etc/composer/a")).unwrap(), b"y");
        assert!(root.put_link("/etc/composer/l", "/opt/x").unwrap());
        assert!(!root.put_link("/etc/composer/l", "/opt/x").unwrap());
        assert!(root.put_link("/etc/composer/l", "/opt/y").unwrap());
        assert_eq!(fs::read_link(dir.path().join("etc/composer/l")).unwrap(), Path::new("/opt/y"));
        let names: Vec<_> =
            fs::read_dir(dir.path().join("etc/composer")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        assert!(NodeRoot::open(Path::new("/")).unwrap().is_live());
    }

    #[test]
    fn reads_os_release_through_an_absolute_link_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("usr/lib/os-release"), "ID=flatcar\nSYSEXT_LEVEL=1.0\n").unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", dir.path().join("etc/os-release")).unwrap();
        let (from, release) = NodeRoot::open(dir.path()).unwrap().os_release().unwrap();
        assert_eq!((from.as_str(), release.get("ID")), ("/etc/os-release", Some("flatcar")));
    }
}
