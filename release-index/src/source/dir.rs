use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};

use super::{Backend, SourceError};

/// A release directory on this machine.
///
/// Only regular files inside the release count. The release path itself may be a symlink
/// (publish keeps `DIR -> DIR.generations/N`), and is resolved on every read, so a
/// long-lived reader sees the next publish. Below that root
/// a symlink is refused, wherever it points: an image or signature that is a link to a file
/// outside would otherwise verify while the release itself is incomplete. FIFOs, sockets and
/// devices are refused without blocking on them.
#[derive(Clone, Debug)]
pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    /// Reads the release at `root` (a publish-managed symlink or a plain directory).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn resolved_root(&self) -> Result<PathBuf, SourceError> {
        fs::canonicalize(&self.root)
            .map_err(|e| SourceError { location: self.root.display().to_string(), cause: e.to_string() })
    }

    /// Opens `relative` if it is a regular file reached without any symlink below the root.
    fn open_regular(&self, relative: &str) -> Result<Option<File>, SourceError> {
        let err = |cause: String| SourceError { location: self.location(relative), cause };
        let rel = Path::new(relative);
        if relative.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(err("not a plain relative path inside the release".into()));
        }
        let mut at = self.resolved_root()?;
        let parts: Vec<Component<'_>> = rel.components().collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let meta = match fs::symlink_metadata(&at) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(err(e.to_string())),
            };
            let ty = meta.file_type();
            let what = if i + 1 == parts.len() { "is" } else { "is below" };
            if ty.is_symlink() {
                let target = fs::read_link(&at).map(|t| t.display().to_string()).unwrap_or_default();
                return Err(err(format!(
                    "{what} a symlink (to '{target}'); only regular files inside the release count"
                )));
            }
            if i + 1 < parts.len() && !ty.is_dir() {
                return Ok(None);
            }
        }
        // O_NOFOLLOW and O_NONBLOCK: whatever was swapped in since the check, a symlink fails
        // and a FIFO does not block the open.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(CWD, &at, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(err("is a symlink; only regular files inside the release count".into()))
            }
            Err(e) => return Err(err(io::Error::from(e).to_string())),
        };
        let file = File::from(fd);
        let ty = file.metadata().map_err(|e| err(e.to_string()))?.file_type();
        if !ty.is_file() {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ty.is_dir() {
                "a directory"
            } else if ty.is_fifo() {
                "a FIFO"
            } else if ty.is_socket() {
                "a socket"
            } else if ty.is_block_device() || ty.is_char_device() {
                "a device"
            } else {
                "not a file"
            };
            return Err(err(format!("is {kind}, not a regular file")));
        }
        Ok(Some(file))
    }
}

impl Backend for DirBackend {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn location(&self, relative: &str) -> String {
        self.root.join(relative).display().to_string()
    }

    fn open(&self, relative: &str) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        Ok(self.open_regular(relative)?.map(|f| Box::new(f) as Box<dyn Read + Send>))
    }

    fn list(&self) -> Option<Result<Vec<String>, SourceError>> {
        let root = match self.resolved_root() {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        Some(walk(&root).map_err(|e| SourceError { location: self.root.display().to_string(), cause: e.to_string() }))
    }

    fn local_path(&self, relative: &str) -> Option<PathBuf> {
        Some(self.resolved_root().ok()?.join(relative))
    }
}

/// Reads everything below `dir` as relative paths. `dir` itself may be a symlink; below it,
/// symlinks are listed as entries and never followed, so a link loop cannot recurse forever
/// and a linked directory is not mistaken for part of the release.
pub fn walk(dir: &Path) -> io::Result<Vec<String>> {
    fn go(root: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if entry.file_type()?.is_dir() {
                go(root, &path, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}
