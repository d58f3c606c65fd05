//! The directory backend: a release directory is a symlink to one complete, signed generation.
//!
//! ```text
//! release -> release.generations/0000000007
//! release.generations/0000000006/   previous state, kept for inspection and manual rollback
//! release.generations/0000000007/   index.json, SHA256SUMS, images (hard links), …
//! ```
//!
//! A publish builds the next generation in a scratch directory beside the current one, syncs
//! it, renames it to its serial and swaps the symlink with one `rename(2)`. A crash anywhere
//! leaves at worst an unreferenced directory, which the next publish removes. Images are
//! immutable and hard-linked from one generation to the next, so a publish costs the new
//! images plus a few kilobytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use signing::PublicKey;
use sysext_model::ImageName;

use super::{check_carried, io_err, PublishError, Stage, Step, Target};
use crate::index::{Artifact, Index};
use crate::layout::{self, Entry};

/// How long a publish waits for another one on the same release.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The directory that holds the generations of `release_dir`.
pub fn generations_dir(release_dir: &Path) -> Option<PathBuf> {
    let name = release_dir.file_name()?;
    let mut g = name.to_owned();
    g.push(".generations");
    Some(release_dir.with_file_name(g))
}

fn generation_name(serial: u64) -> String {
    format!("{serial:010}")
}

/// What the release path currently is.
enum Current {
    Absent,
    EmptyDir,
    Generation(PathBuf),
}

/// A release directory managed by publish.
#[derive(Debug)]
pub struct DirTarget {
    release_dir: PathBuf,
    store: PathBuf,
    /// Whether the store existed before this publish (a failed first publish removes it).
    first: bool,
}

impl DirTarget {
    /// The release at `release_dir` (a symlink managed by publish, absent, or an empty
    /// directory).
    pub fn new(release_dir: &Path) -> Result<Self, PublishError> {
        // `release/` would make every lookup follow the symlink instead of looking at it.
        let release_dir: PathBuf = release_dir.components().collect();
        let store = generations_dir(&release_dir).ok_or_else(|| PublishError::NotARelease {
            path: release_dir.clone(),
            reason: "give the release directory by name".into(),
        })?;
        let first = !store.exists();
        Ok(Self { release_dir, store, first })
    }

    fn current_state(&self) -> Result<Current, PublishError> {
        let release_dir = &self.release_dir;
        let not_release = |reason: String| PublishError::NotARelease { path: release_dir.clone(), reason };
        let meta = match fs::symlink_metadata(release_dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Current::Absent),
            Err(e) => return Err(io_err(release_dir)(e)),
        };
        let store_name = self.store.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if meta.is_symlink() {
            let target = fs::read_link(release_dir).map_err(io_err(release_dir))?;
            let t = target.to_string_lossy();
            let serial = t
                .strip_prefix(&format!("{store_name}/"))
                .filter(|s| s.len() == 10 && s.bytes().all(|c| c.is_ascii_digit()));
            return match serial {
                Some(s) => Ok(Current::Generation(self.store.join(s))),
                None => Err(not_release(format!(
                    "a symlink to '{t}', expected one to '{store_name}/<serial>' as publish makes"
                ))),
            };
        }
        if meta.is_dir() {
            let empty = fs::read_dir(release_dir).map_err(io_err(release_dir))?.next().is_none();
            if empty {
                return Ok(Current::EmptyDir);
            }
            return Err(not_release(format!(
                "a directory that publish does not manage; publish keeps a release as a symlink to '{store_name}/<serial>' so that it can swap it atomically: publish to a new path"
            )));
        }
        Err(not_release("exists and is not a directory".into()))
    }
}

/// Holds the publish lock (an advisory lock on `<store>/.lock`) until dropped.
struct Lock {
    _file: File,
}

impl Target for DirTarget {
    fn name(&self) -> PathBuf {
        self.release_dir.clone()
    }

    fn lock(&self) -> Result<Box<dyn std::any::Any>, PublishError> {
        fs::create_dir_all(&self.store).map_err(io_err(&self.store))?;
        let lock_path = self.store.join(".lock");
        let lock =
            File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        // Another publish finishes in seconds; wait for it rather than fail. (The wait also
        // covers the instant a forked child still holds our descriptor before it execs.)
        let started = std::time::Instant::now();
        while let Err(e) = lock.try_lock() {
            match e {
                fs::TryLockError::WouldBlock if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => return Err(PublishError::Locked { path: lock_path.clone() }),
            }
        }
        Ok(Box::new(Lock { _file: lock }))
    }

    fn current(&self, key: &PublicKey) -> Result<Option<Index>, PublishError> {
        let Current::Generation(generation) = self.current_state()? else { return Ok(None) };
        let invalid = |reason: String| PublishError::CurrentInvalid { path: generation.clone(), reason };
        let index_path = generation.join(layout::INDEX);
        let bytes = fs::read(&index_path).map_err(io_err(&index_path))?;
        let index = Index::parse(&bytes).map_err(|e| invalid(e.to_string()))?;
        super::check_signer(&index, key, &self.release_dir)?;
        key.verify_file(&index_path).map_err(|e| invalid(e.to_string()))?;
        if generation.file_name().is_none_or(|n| n.to_string_lossy() != generation_name(index.serial)) {
            return Err(invalid(format!(
                "index.json has serial {} but lives in {}",
                index.serial,
                generation.display()
            )));
        }
        Ok(Some(index))
    }

    fn stage(&self, serial: u64, previous: Option<&Index>) -> Result<Box<dyn Stage + '_>, PublishError> {
        // Leftovers of crashed publishes: scratch directories and generations never made current.
        let current_serial = previous.map_or(0, |p| p.serial);
        for entry in fs::read_dir(&self.store).map_err(io_err(&self.store))? {
            let entry = entry.map_err(io_err(&self.store))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_generation = name.parse::<u64>().is_ok_and(|s| s > current_serial);
            if name.starts_with(".tmp-") || stale_generation {
                fs::remove_dir_all(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        let tmp = self.store.join(format!(".tmp-{}", generation_name(serial)));
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let (current, replace_empty_dir) = match self.current_state()? {
            Current::Generation(g) => (Some(g), false),
            Current::EmptyDir => (None, true),
            Current::Absent => (None, false),
        };
        Ok(Box::new(DirStage { target: self, serial, tmp, current, replace_empty_dir, armed: true }))
    }

    fn incoming_dir(&self) -> Option<PathBuf> {
        Some(self.store.join(".incoming"))
    }

    fn abandon_first(&self) {
        let swapped = fs::symlink_metadata(&self.release_dir).is_ok_and(|m| m.is_symlink());
        if self.first && !swapped {
            let _ = fs::remove_dir_all(&self.store);
        }
    }
}

/// A generation being built in `<store>/.tmp-<serial>`; removed on drop unless committed.
struct DirStage<'a> {
    target: &'a DirTarget,
    serial: u64,
    tmp: PathBuf,
    current: Option<PathBuf>,
    replace_empty_dir: bool,
    armed: bool,
}

impl Drop for DirStage<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    let mut f = File::create_new(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(path: &Path) -> Result<(), PublishError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(io_err(path))
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), PublishError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    // Some file systems refuse hard links; a copy costs space but keeps the layout.
    fs::copy(from, to).map_err(io_err(to))?;
    File::open(to).and_then(|f| f.sync_all()).map_err(io_err(to))
}

impl DirStage<'_> {
    fn ensure_parent(&self, path: &str) -> Result<PathBuf, PublishError> {
        let dest = self.tmp.join(path);
        let dir = dest.parent().expect("paths inside the generation have a parent");
        if !dir.exists() {
            fs::create_dir(dir).map_err(io_err(dir))?;
        }
        Ok(dest)
    }
}

impl Stage for DirStage<'_> {
    fn carry(&mut self, art: &Artifact) -> Result<(), PublishError> {
        let cur = self.current.as_ref().expect("carried images come from a current generation");
        let file = art.file.to_string();
        let from = cur.join(&file);
        // Before it is linked into one more generation.
        check_carried(&from, art)?;
        link_or_copy(&from, &self.tmp.join(&file))?;
        link_or_copy(&cur.join(layout::sig(&file)), &self.tmp.join(layout::sig(&file)))
    }

    fn add_image(&mut self, artifact: &Artifact, bytes: &[u8], signature: &[u8]) -> Result<(), PublishError> {
        let file = artifact.file.to_string();
        write_file(&self.tmp.join(&file), bytes)?;
        write_file(&self.tmp.join(layout::sig(&file)), signature)
    }

    fn add_image_file(&mut self, artifact: &Artifact, path: &Path, signature: &[u8]) -> Result<(), PublishError> {
        let file = artifact.file.to_string();
        let dest = self.tmp.join(&file);
        link_or_copy(path, &dest)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644)).map_err(io_err(&dest))?;
        write_file(&self.tmp.join(layout::sig(&file)), signature)
    }

    fn alias(&mut self, path: &str, image: &ImageName) -> Result<(), PublishError> {
        let dest = self.ensure_parent(path)?;
        link_or_copy(&self.tmp.join(image.to_string()), &dest)
    }

    fn write(&mut self, path: &str, bytes: &[u8]) -> Result<(), PublishError> {
        let dest = self.ensure_parent(path)?;
        write_file(&dest, bytes)
    }

    fn commit(
        mut self: Box<Self>,
        expected: &BTreeMap<String, Entry>,
        keep: usize,
        fail: &dyn Fn(Step) -> Result<(), PublishError>,
    ) -> Result<PathBuf, PublishError> {
        let tmp = self.tmp.clone();
        // Everything the layout promises and nothing else, before anyone can see it.
        let written: BTreeSet<String> = crate::source::walk(&tmp).map_err(io_err(&tmp))?.into_iter().collect();
        let promised: BTreeSet<String> = expected.keys().cloned().collect();
        assert_eq!(written, promised, "publish wrote a different set of files than the layout lists");

        let dirs: BTreeSet<PathBuf> =
            expected.keys().filter_map(|p| p.rsplit_once('/').map(|(d, _)| tmp.join(d))).collect();
        for dir in dirs.into_iter().chain([tmp.clone()]) {
            sync_dir(&dir)?;
        }
        let store = &self.target.store;
        let generation = store.join(generation_name(self.serial));
        fs::rename(&tmp, &generation).map_err(io_err(&generation))?;
        self.armed = false;
        sync_dir(store)?;
        fail(Step::Commit)?;

        swap(&self.target.release_dir, store, self.serial, self.replace_empty_dir)?;
        fail(Step::Swap)?;

        prune(store, self.serial, keep)?;
        fail(Step::Prune)?;
        Ok(generation)
    }
}

fn swap(release_dir: &Path, store: &Path, serial: u64, replace_empty_dir: bool) -> Result<(), PublishError> {
    let parent = release_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = release_dir.file_name().expect("checked by generations_dir").to_string_lossy();
    let prefix = format!(".{name}.swap-");
    // Only the lock holder creates these, so any other one was left by a killed publish.
    for entry in fs::read_dir(parent).map_err(io_err(parent))? {
        let entry = entry.map_err(io_err(parent))?;
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && entry.file_name().to_string_lossy().starts_with(&prefix) {
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    let staged = parent.join(format!("{prefix}{}", std::process::id()));
    let target = Path::new(store.file_name().expect("named")).join(generation_name(serial));
    symlink(&target, &staged).map_err(io_err(&staged))?;
    if replace_empty_dir {
        // rename(2) cannot replace a directory with a symlink; the directory is empty, so
        // nothing is lost in the instant between.
        fs::remove_dir(release_dir).map_err(io_err(release_dir))?;
    }
    fs::rename(&staged, release_dir).map_err(io_err(release_dir))?;
    sync_dir(parent)
}

fn prune(store: &Path, current: u64, keep: usize) -> Result<(), PublishError> {
    let mut serials: Vec<u64> = fs::read_dir(store)
        .map_err(io_err(store))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|s| *s <= current)
        .collect();
    serials.sort_unstable_by(|a, b| b.cmp(a));
    for old in serials.into_iter().skip(keep) {
        let path = store.join(generation_name(old));
        fs::remove_dir_all(&path).map_err(io_err(&path))?;
    }
    Ok(())
}
