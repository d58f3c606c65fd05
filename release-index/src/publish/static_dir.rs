//! A plain directory updated in place, for static hosting: a web root, a mounted bucket, or a
//! tree an upload tool copies file by file.
//!
//! No symlink swap is possible there, so the order of the writes is what keeps readers safe,
//! and it is the order docs/static-hosting.md asks of any upload: new images and their
//! signatures, then the checksum lists, the transfer files, and only then `index.json.sig` and
//! last `index.json`. Each file is written to a temporary name and renamed, so no file is ever
//! seen half-written; a reader that fetches the index always finds every file it names. A
//! reader that fetches `index.json` and `index.json.sig` across the last two renames sees a
//! signature that does not match and retries; it never accepts anything. Nothing is deleted:
//! the previous release's files stay for readers still on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use signing::PublicKey;
use sysext_model::ImageName;

use super::{check_carried, io_err, PublishError, Stage, Step, Target};
use crate::index::{Artifact, Index};
use crate::layout::{self, Entry};

/// Called with each path right after it landed (a testing hook).
pub type WriteObserver = Box<dyn Fn(&str) + Send + Sync>;

/// A plain release directory written in place.
pub struct StaticDirTarget {
    dir: PathBuf,
    observer: Option<WriteObserver>,
}

impl std::fmt::Debug for StaticDirTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticDirTarget").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl StaticDirTarget {
    /// The directory `dir` (created if absent).
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), observer: None }
    }

    /// Calls `observer` after every file lands.
    pub fn observe(mut self, observer: WriteObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn landed(&self, path: &str) {
        if let Some(o) = &self.observer {
            o(path);
        }
    }

    fn lock_path(&self) -> PathBuf {
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.dir.with_file_name(format!(".{name}.lock"))
    }

    /// Writes `bytes` to `relative` through a temporary file and a rename.
    fn put(&self, relative: &str, bytes: &[u8]) -> Result<(), PublishError> {
        let dest = self.dir.join(relative);
        let parent = dest.parent().expect("inside the directory");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let mut tmp = tempfile::Builder::new().prefix(".bakery-").tempfile_in(parent).map_err(io_err(parent))?;
        tmp.write_all(bytes).map_err(io_err(&dest))?;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_err(&dest))?;
        tmp.as_file().sync_all().map_err(io_err(&dest))?;
        tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))?;
        self.landed(relative);
        Ok(())
    }

    /// Places the file at `from` as `relative`: a hard link to a temporary name, renamed.
    fn put_file(&self, relative: &str, from: &Path) -> Result<(), PublishError> {
        let dest = self.dir.join(relative);
        let parent = dest.parent().expect("inside the directory");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp = parent.join(format!(
            ".bakery-{}.{}",
            std::process::id(),
            dest.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(from, &tmp).is_err() {
            fs::copy(from, &tmp).map_err(io_err(&tmp))?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))?;
        self.landed(relative);
        Ok(())
    }
}

struct Lock {
    _file: File,
}

impl Target for StaticDirTarget {
    fn name(&self) -> PathBuf {
        self.dir.clone()
    }

    fn lock(&self) -> Result<Box<dyn std::any::Any>, PublishError> {
        let path = self.lock_path();
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
        file.try_lock().map_err(|_| PublishError::Locked { path: path.clone() })?;
        Ok(Box::new(Lock { _file: file }))
    }

    fn current(&self, key: &PublicKey) -> Result<Option<Index>, PublishError> {
        let index_path = self.dir.join(layout::INDEX);
        let bytes = match fs::read(&index_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let occupied = fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some());
                if occupied {
                    return Err(PublishError::NotARelease {
                        path: self.dir.clone(),
                        reason: "has files but no index.json; give an empty or new directory".into(),
                    });
                }
                return Ok(None);
            }
            Err(e) => return Err(io_err(&index_path)(e)),
        };
        let invalid = |reason: String| PublishError::CurrentInvalid { path: self.dir.clone(), reason };
        let index = Index::parse(&bytes).map_err(|e| invalid(e.to_string()))?;
        super::check_signer(&index, key, &self.dir)?;
        key.verify_detached(&index_path, &bytes).map_err(|e| invalid(e.to_string()))?;
        Ok(Some(index))
    }

    fn stage(&self, _serial: u64, _previous: Option<&Index>) -> Result<Box<dyn Stage + '_>, PublishError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        Ok(Box::new(StaticStage { target: self, written: BTreeSet::new(), deferred: BTreeMap::new() }))
    }
}

struct StaticStage<'a> {
    target: &'a StaticDirTarget,
    written: BTreeSet<String>,
    /// `index.json` and its signature, written at commit.
    deferred: BTreeMap<String, Vec<u8>>,
}

impl Stage for StaticStage<'_> {
    fn carry(&mut self, art: &Artifact) -> Result<(), PublishError> {
        let file = art.file.to_string();
        check_carried(&self.target.dir.join(&file), art)?;
        self.written.insert(file.clone());
        self.written.insert(layout::sig(&file));
        Ok(())
    }

    fn add_image(&mut self, art: &Artifact, bytes: &[u8], signature: &[u8]) -> Result<(), PublishError> {
        let file = art.file.to_string();
        self.target.put(&file, bytes)?;
        self.target.put(&layout::sig(&file), signature)?;
        self.written.insert(file.clone());
        self.written.insert(layout::sig(&file));
        Ok(())
    }

    fn add_image_file(&mut self, art: &Artifact, path: &Path, signature: &[u8]) -> Result<(), PublishError> {
        let file = art.file.to_string();
        self.target.put_file(&file, path)?;
        self.target.put(&layout::sig(&file), signature)?;
        self.written.insert(file.clone());
        self.written.insert(layout::sig(&file));
        Ok(())
    }

    fn alias(&mut self, path: &str, image: &ImageName) -> Result<(), PublishError> {
        let from = self.target.dir.join(image.to_string());
        self.target.put_file(path, &from)?;
        self.written.insert(path.to_owned());
        Ok(())
    }

    fn write(&mut self, path: &str, bytes: &[u8]) -> Result<(), PublishError> {
        if path == layout::INDEX || path == layout::sig(layout::INDEX) {
            self.deferred.insert(path.to_owned(), bytes.to_vec());
        } else {
            self.target.put(path, bytes)?;
        }
        self.written.insert(path.to_owned());
        Ok(())
    }

    fn commit(
        self: Box<Self>,
        expected: &BTreeMap<String, Entry>,
        _keep: usize,
        fail: &dyn Fn(Step) -> Result<(), PublishError>,
    ) -> Result<PathBuf, PublishError> {
        let promised: BTreeSet<String> = expected.keys().cloned().collect();
        assert_eq!(self.written, promised, "publish wrote a different set of files than the layout lists");
        let sig = layout::sig(layout::INDEX);
        self.target.put(&sig, &self.deferred[&sig])?;
        fail(Step::Commit)?;
        self.target.put(layout::INDEX, &self.deferred[layout::INDEX])?;
        fail(Step::Swap)?;
        fail(Step::Prune)?;
        Ok(self.target.dir.clone())
    }
}
