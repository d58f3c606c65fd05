use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{Backend, SourceError};

/// A release directory on this machine.
#[derive(Clone, Debug)]
pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    /// Reads the release at `root` (a publish-managed symlink or a plain directory).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
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
        match std::fs::File::open(self.root.join(relative)) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SourceError { location: self.location(relative), cause: e.to_string() }),
        }
    }

    fn list(&self) -> Option<Result<Vec<String>, SourceError>> {
        Some(
            walk(&self.root)
                .map_err(|e| SourceError { location: self.root.display().to_string(), cause: e.to_string() }),
        )
    }

    fn local_path(&self, relative: &str) -> Option<PathBuf> {
        Some(self.root.join(relative))
    }
}

/// Reads everything below `dir` as relative paths, following symlinks to files (hard links
/// and the release symlink are how publish lays a release out).
pub fn walk(dir: &Path) -> io::Result<Vec<String>> {
    fn go(root: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if std::fs::metadata(root.join(&path)).is_ok_and(|m| m.is_dir()) {
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
