//! Adding images to a release directory, atomically.
//!
//! A release directory is a symlink to one complete, signed generation:
//!
//! ```text
//! release -> release.generations/0000000007
//! release.generations/0000000006/   previous state, kept for inspection and manual rollback
//! release.generations/0000000007/   index.json, SHA256SUMS, images (hard links), …
//! ```
//!
//! A publish builds the next generation beside the current one (new images first, then the
//! checksum lists, transfer files and finally the signed index), syncs it, and swaps the
//! symlink with one `rename(2)`. Until that instant readers see the previous generation,
//! complete and valid; after it, the new one. A crash anywhere leaves at worst an unreferenced
//! directory, which the next publish removes. Images are immutable and hard-linked from one
//! generation to the next, so a publish costs the new images plus a few kilobytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use signing::{Digests, DigestsWriter, KeyError, KeyId, PrivateKey, Sha256Digest};

use crate::extension_release::ExtensionRelease;
use crate::index::{Artifact, BaseUrl, Index, SCHEMA_VERSION};
use crate::inputs::Input;
use crate::layout::{self, Entry};
use crate::timestamp::Timestamp;
use crate::ImageName;

/// An image to publish, with what the caller read from inside it.
#[derive(Clone, Debug)]
pub struct NewImage {
    /// The image file; its name must be `NAME-VERSION-ARCH.raw`.
    pub path: PathBuf,
    /// The image's `extension-release.NAME`.
    pub extension_release: ExtensionRelease,
    /// The image's inputs lock entries.
    pub inputs: Vec<Input>,
}

/// The steps of a publish, in order. Failure injection uses them to prove that a failure after
/// any step leaves a valid release behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Lock taken, current generation verified, scratch directory created.
    Prepare,
    /// The current generation's images hard-linked into the new one.
    LinkPrevious,
    /// New images copied (hashed on the way) and signed.
    CopyImages,
    /// `SHA256SUMS` files and their signatures written.
    WriteSums,
    /// Transfer files written.
    WriteTransfers,
    /// `index.json` and its signature written.
    WriteIndex,
    /// The new generation synced and renamed into place (not yet current).
    Commit,
    /// The release symlink points at the new generation.
    Swap,
    /// Old generations removed.
    Prune,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 9] = [
        Step::Prepare,
        Step::LinkPrevious,
        Step::CopyImages,
        Step::WriteSums,
        Step::WriteTransfers,
        Step::WriteIndex,
        Step::Commit,
        Step::Swap,
        Step::Prune,
    ];
}

/// How to publish.
#[derive(Debug)]
pub struct PublishOptions<'a> {
    /// The release directory (a symlink managed by publish, or absent, or an empty directory).
    pub release_dir: &'a Path,
    /// The release signing key.
    pub key: &'a PrivateKey,
    /// Where the release will be served; required the first time, remembered after.
    pub base_url: Option<BaseUrl>,
    /// How long the new index stays valid.
    pub valid_for: Duration,
    /// The time to stamp the index with.
    pub now: Timestamp,
    /// Generations to keep, the new one included (at least 2, so the previous state survives).
    pub keep_generations: usize,
    /// Testing hook: fail right after this step.
    pub fail_after: Option<Step>,
}

/// What a publish did.
#[derive(Debug)]
pub struct Published {
    /// The new index.
    pub index: Index,
    /// The new generation directory.
    pub generation: PathBuf,
    /// Images added by this publish.
    pub added: Vec<ImageName>,
    /// Images that were already published with identical bytes.
    pub unchanged: Vec<ImageName>,
}

/// Why a publish failed. Whatever the reason, the release directory still shows its previous
/// state.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// File system trouble.
    #[error("{}: {cause}", path.display())]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
    /// An image that cannot be published.
    #[error("{}: {reason}", path.display())]
    Image {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The target is not a release directory this tool manages.
    #[error("{}: {reason}", path.display())]
    NotARelease {
        /// The release directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The current generation does not verify; publishing on top of it would bless it.
    #[error("{}: the current release does not verify, refusing to extend it: {reason}", path.display())]
    CurrentInvalid {
        /// The generation directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The current index was signed by another key.
    #[error("{}: index.json is signed by key {current}, but the key given is {given}; publish with the release's key", path.display())]
    KeyMismatch {
        /// The release directory.
        path: PathBuf,
        /// Key id in the current index.
        current: KeyId,
        /// Key id of the key given.
        given: KeyId,
    },
    /// No base URL on a first publish.
    #[error("{}: a first publish needs --base-url (the http(s) URL this directory will be served from; transfer files point into it)", path.display())]
    NeedBaseUrl {
        /// The release directory.
        path: PathBuf,
    },
    /// Another publish holds the lock.
    #[error("{}: another publish has held this release for over two minutes", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] KeyError),
    /// Testing hook.
    #[error("injected failure after step {0:?}")]
    Injected(Step),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PublishError + '_ {
    move |cause| PublishError::Io { path: path.to_owned(), cause }
}

/// The directory that holds the generations of `release_dir`.
pub fn generations_dir(release_dir: &Path) -> Option<PathBuf> {
    let name = release_dir.file_name()?;
    let mut g = name.to_owned();
    g.push(".generations");
    Some(release_dir.with_file_name(g))
}

/// How long a publish waits for another one on the same release.
const LOCK_WAIT: Duration = Duration::from_secs(120);

fn generation_name(serial: u64) -> String {
    format!("{serial:010}")
}

/// What `release_dir` currently is.
enum Current {
    Absent,
    EmptyDir,
    Generation(PathBuf),
}

fn current(release_dir: &Path, store: &Path) -> Result<Current, PublishError> {
    let not_release = |reason: String| PublishError::NotARelease { path: release_dir.to_owned(), reason };
    let meta = match fs::symlink_metadata(release_dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Current::Absent),
        Err(e) => return Err(io_err(release_dir)(e)),
    };
    let store_name = store.file_name().unwrap_or_default().to_string_lossy().into_owned();
    if meta.is_symlink() {
        let target = fs::read_link(release_dir).map_err(io_err(release_dir))?;
        let t = target.to_string_lossy();
        let serial = t
            .strip_prefix(&format!("{store_name}/"))
            .filter(|s| s.len() == 10 && s.bytes().all(|c| c.is_ascii_digit()));
        return match serial {
            Some(s) => Ok(Current::Generation(store.join(s))),
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

/// Reads and verifies the index of a generation with the publishing key.
fn load_current(generation: &Path, key: &PrivateKey, release_dir: &Path) -> Result<Index, PublishError> {
    let invalid = |reason: String| PublishError::CurrentInvalid { path: generation.to_owned(), reason };
    let index_path = generation.join(layout::INDEX);
    let bytes = fs::read(&index_path).map_err(io_err(&index_path))?;
    let index = Index::parse(&bytes).map_err(|e| invalid(e.to_string()))?;
    if index.key_id != key.key_id() {
        return Err(PublishError::KeyMismatch {
            path: release_dir.to_owned(),
            current: index.key_id,
            given: key.key_id(),
        });
    }
    key.public().verify_file(&index_path).map_err(|e| invalid(e.to_string()))?;
    if generation.file_name().is_none_or(|n| n.to_string_lossy() != generation_name(index.serial)) {
        return Err(invalid(format!("index.json has serial {} but lives in {}", index.serial, generation.display())));
    }
    Ok(index)
}

/// Removes a half-built generation unless it was committed.
struct Scratch {
    path: PathBuf,
    armed: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
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

/// A validated image with its coordinates.
struct Candidate<'a> {
    image: &'a NewImage,
    name: ImageName,
}

fn validate<'a>(
    images: &'a [NewImage],
    previous: Option<&Index>,
) -> Result<(Vec<Candidate<'a>>, Vec<ImageName>), PublishError> {
    let mut fresh = Vec::new();
    let mut unchanged = Vec::new();
    let mut seen = BTreeSet::new();
    for image in images {
        let bad = |reason: String| PublishError::Image { path: image.path.clone(), reason };
        let file = image.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name: ImageName = file.parse().map_err(|e| bad(format!("{e}")))?;
        let rel = &image.extension_release;
        let arch = name.arch.as_str();
        match rel.get("ARCHITECTURE") {
            Some(a) if a == arch => {}
            other => {
                return Err(bad(format!(
                    "its extension-release says ARCHITECTURE={}, but the file name says {arch}",
                    other.unwrap_or("(missing)")
                )))
            }
        }
        if rel.get("ID").is_none_or(str::is_empty) {
            return Err(bad("its extension-release has no ID=; systemd-sysext would refuse to merge it".into()));
        }
        for (key, want) in [("SYSEXT_ID", name.name.as_str()), ("SYSEXT_VERSION_ID", name.version.as_str())] {
            if let Some(got) = rel.get(key) {
                if got != want {
                    return Err(bad(format!("its extension-release says {key}={got}, but the file name says {want}")));
                }
            }
        }
        if !seen.insert(name.clone()) {
            return Err(bad(format!("'{name}' is given twice")));
        }
        if let Some(published) = previous.and_then(|p| p.artifact(&name)) {
            let digests = Digests::of_reader(File::open(&image.path).map_err(io_err(&image.path))?)
                .map_err(io_err(&image.path))?;
            if digests.sha256 != published.sha256 {
                return Err(bad(format!(
                    "'{name}' is already published with sha256 {} and this file has {}; published images never change: build a new version",
                    published.sha256, digests.sha256
                )));
            }
            unchanged.push(name);
            continue;
        }
        // Mixing `v1.31.3` and `1.31.4` in one extension would make sysupdate order them by the
        // prefix (letters sort below digits), so the bare one would always win.
        let prefixed = name.version.as_str().starts_with('v');
        let existing = previous
            .and_then(|p| p.extensions.get(&name.name))
            .into_iter()
            .flat_map(|v| v.keys())
            .chain(fresh.iter().filter(|c: &&Candidate<'_>| c.name.name == name.name).map(|c| &c.name.version));
        for other in existing {
            if other.as_str().starts_with('v') != prefixed {
                return Err(bad(format!(
                    "version '{}' and already listed '{other}' differ in their 'v' prefix; systemd-sysupdate would order every bare version above every 'v' one",
                    name.version
                )));
            }
        }
        fresh.push(Candidate { image, name });
    }
    Ok((fresh, unchanged))
}

/// Publishes `images` into the release directory. See the module docs for the guarantees.
pub fn publish(images: &[NewImage], opts: &PublishOptions<'_>) -> Result<Published, PublishError> {
    // `release/` would make every lookup follow the symlink instead of looking at it.
    let release_dir: PathBuf = opts.release_dir.components().collect();
    let not_release = |reason: &str| PublishError::NotARelease { path: release_dir.clone(), reason: reason.into() };
    let store = generations_dir(&release_dir).ok_or_else(|| not_release("give the release directory by name"))?;
    let first = !store.exists();
    let result = publish_into(images, opts, &release_dir, &store);
    let swapped = fs::symlink_metadata(&release_dir).is_ok_and(|m| m.is_symlink());
    if result.is_err() && first && !swapped {
        // A first publish that failed before the swap leaves nothing behind, not even a store.
        let _ = fs::remove_dir_all(&store);
    }
    result
}

fn publish_into(
    images: &[NewImage],
    opts: &PublishOptions<'_>,
    release_dir: &Path,
    store: &Path,
) -> Result<Published, PublishError> {
    let fail = |step: Step| if opts.fail_after == Some(step) { Err(PublishError::Injected(step)) } else { Ok(()) };

    fs::create_dir_all(store).map_err(io_err(store))?;
    let lock_path = store.join(".lock");
    let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
    // Another publish finishes in seconds; wait for it rather than fail. (The wait also covers
    // the instant a forked child still holds our descriptor before it execs.)
    let started = std::time::Instant::now();
    while let Err(e) = lock.try_lock() {
        match e {
            fs::TryLockError::WouldBlock if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => return Err(PublishError::Locked { path: lock_path.clone() }),
        }
    }

    let current = current(release_dir, store)?;
    let previous = match &current {
        Current::Generation(g) => Some(load_current(g, opts.key, release_dir)?),
        _ => None,
    };
    let serial = previous.as_ref().map_or(1, |p| p.serial + 1);
    let base_url = match (&opts.base_url, &previous) {
        (Some(u), _) => u.clone(),
        (None, Some(p)) => p.base_url.clone(),
        (None, None) => return Err(PublishError::NeedBaseUrl { path: release_dir.to_owned() }),
    };
    let (fresh, unchanged) = validate(images, previous.as_ref())?;

    // Leftovers of crashed publishes: scratch directories and generations never made current.
    let current_serial = previous.as_ref().map_or(0, |p| p.serial);
    for entry in fs::read_dir(store).map_err(io_err(store))? {
        let entry = entry.map_err(io_err(store))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_generation = name.parse::<u64>().is_ok_and(|s| s > current_serial);
        if name.starts_with(".tmp-") || stale_generation {
            fs::remove_dir_all(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    let mut scratch = Scratch { path: store.join(format!(".tmp-{}", generation_name(serial))), armed: true };
    let tmp = scratch.path.clone();
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    fail(Step::Prepare)?;

    let mut index = Index {
        schema_version: SCHEMA_VERSION,
        serial,
        generated_at: opts.now,
        expires: opts.now.after(opts.valid_for),
        key_id: opts.key.key_id(),
        base_url,
        extensions: previous.as_ref().map(|p| p.extensions.clone()).unwrap_or_default(),
        transfer_files: BTreeMap::new(),
    };
    if let (Current::Generation(cur), Some(prev)) = (&current, &previous) {
        for (_, _, _, art) in prev.artifacts() {
            let file = art.file.to_string();
            let from = cur.join(&file);
            let size = fs::metadata(&from).map_err(io_err(&from))?.len();
            if size != art.size {
                return Err(PublishError::CurrentInvalid {
                    path: cur.clone(),
                    reason: format!("{file} is {size} bytes, index.json says {}", art.size),
                });
            }
            link_or_copy(&from, &tmp.join(&file))?;
            link_or_copy(&cur.join(layout::sig(&file)), &tmp.join(layout::sig(&file)))?;
        }
    }
    fail(Step::LinkPrevious)?;

    let mut added = Vec::new();
    for c in &fresh {
        let dest = tmp.join(c.name.to_string());
        let src = File::open(&c.image.path).map_err(io_err(&c.image.path))?;
        let out = File::create_new(&dest).map_err(io_err(&dest))?;
        let mut w = DigestsWriter::new(out);
        signing::copy(src, &mut w).map_err(io_err(&c.image.path))?;
        let (digests, out) = w.finish();
        out.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_err(&dest))?;
        out.sync_all().map_err(io_err(&dest))?;
        opts.key.sign_file(&dest)?;
        let artifact = Artifact {
            file: c.name.clone(),
            size: digests.size,
            sha256: digests.sha256,
            sha512: digests.sha512,
            extension_release: c.image.extension_release.clone(),
            inputs: c.image.inputs.clone(),
        };
        index
            .extensions
            .entry(c.name.name.clone())
            .or_default()
            .entry(c.name.version.clone())
            .or_default()
            .insert(c.name.arch, artifact);
        added.push(c.name.clone());
    }
    fail(Step::CopyImages)?;

    let expected = layout::expected(&index);
    for (path, entry) in &expected {
        if let Entry::Image(name) = entry {
            if path.contains('/') {
                let dest = tmp.join(path);
                let dir = dest.parent().expect("extension directory");
                if !dir.exists() {
                    fs::create_dir(dir).map_err(io_err(dir))?;
                }
                link_or_copy(&tmp.join(name.to_string()), &dest)?;
            }
        }
    }
    for (path, entry) in &expected {
        if let Entry::Sums(text) = entry {
            let dest = tmp.join(path);
            write_file(&dest, text.as_bytes())?;
            opts.key.sign_file(&dest)?;
        }
    }
    fail(Step::WriteSums)?;

    for (path, text) in layout::transfer_files(&index) {
        write_file(&tmp.join(&path), text.as_bytes())?;
        index.transfer_files.insert(path, Sha256Digest::of(text.as_bytes()));
    }
    fail(Step::WriteTransfers)?;

    let index_path = tmp.join(layout::INDEX);
    write_file(&index_path, index.to_json().as_bytes())?;
    opts.key.sign_file(&index_path)?;
    fail(Step::WriteIndex)?;

    // Everything the layout promises and nothing else, before anyone can see it.
    let written: BTreeSet<String> = crate::source::walk(&tmp).map_err(io_err(&tmp))?.into_iter().collect();
    let promised: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(written, promised, "publish wrote a different set of files than the layout lists");

    for dir in index.extensions.keys().map(|n| tmp.join(n.as_str())).chain([tmp.clone()]) {
        sync_dir(&dir)?;
    }
    let generation = store.join(generation_name(serial));
    fs::rename(&tmp, &generation).map_err(io_err(&generation))?;
    scratch.armed = false;
    sync_dir(store)?;
    fail(Step::Commit)?;

    swap(release_dir, store, serial, matches!(current, Current::EmptyDir))?;
    fail(Step::Swap)?;

    prune(store, serial, opts.keep_generations.max(2))?;
    fail(Step::Prune)?;
    drop(lock);
    Ok(Published { index, generation, added, unchanged })
}

fn swap(release_dir: &Path, store: &Path, serial: u64, replace_empty_dir: bool) -> Result<(), PublishError> {
    let parent = release_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = release_dir.file_name().expect("checked by generations_dir").to_string_lossy();
    let staged = parent.join(format!(".{name}.swap-{}", std::process::id()));
    let _ = fs::remove_file(&staged);
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
