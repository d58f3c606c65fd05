//! Adding images to a release, atomically, whatever the release lives on.
//!
//! The flow is the same for every [`Target`]: take the release's lock, read and verify the
//! current index with the publishing key, validate the new images against it, then stage the
//! next generation (the current images carried over and checked, the new images and their
//! signatures, the checksum lists, the transfer files and finally the signed index) and make
//! it current in one step. Until that step readers see the previous release, complete and
//! valid; after it, the new one. [`dir`] is the directory backend (a symlink swapped with one
//! `rename(2)`), [`oci`] the registry backend (a tag moved with one manifest PUT), [`static_dir`]
//! a plain directory for static hosts, written file by file in an order no reader can catch
//! half-done. [`mirror`] copies a signed release into any of them with the same flow.

pub mod dir;
pub mod mirror;
pub mod oci;
pub mod static_dir;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use signing::openpgp::OpenPgpKey;
use signing::{Digests, KeyError, KeyId, PrivateKey, PublicKey, Sha256Digest};
use sysext_model::{BaseUrl, ExtensionRelease, ImageName};

use crate::index::{Artifact, Index, SCHEMA_VERSION};
use crate::inputs::Input;
use crate::layout::{self, Entry};
use crate::rotation::KeyRotation;
use crate::timestamp::Timestamp;

pub use dir::{generations_dir, DirTarget};
pub use oci::OciTarget;
pub use static_dir::StaticDirTarget;

/// Where a release is published or mirrored to, as given on a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A release directory managed by publish (a symlink to its current generation).
    Dir(PathBuf),
    /// A repository in an OCI registry.
    Oci(crate::oci::OciRepo),
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if crate::oci::is_oci(s) {
            return s.parse().map(Self::Oci).map_err(|e: crate::oci::OciRepoParseError| e.to_string());
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Err(format!(
                "{s}: an http(s) server cannot be written to; write a directory and upload it (in the order docs/static-hosting.md gives), or use oci://REGISTRY/REPOSITORY"
            ));
        }
        if s.is_empty() {
            return Err("an empty destination".into());
        }
        Ok(Self::Dir(PathBuf::from(s.strip_prefix("file://").unwrap_or(s))))
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::Oci(r) => r.fmt(f),
        }
    }
}

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
    /// A planned key rotation to `key` from the key that signed the current release, which
    /// vouches for it (see [`crate::rotation`]).
    pub rotation: Option<&'a KeyRotation>,
    /// Also sign every `SHA256SUMS` with the OpenPGP key derived from `key`, for stock
    /// systemd-sysupdate. Once a release has OpenPGP signatures, every later publish keeps
    /// them (nodes were given transfer files with `Verify=yes`).
    pub openpgp: bool,
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
    #[error("{}: index.json is signed by key {current}, but the key given is {given}; publish with the release's key (or, to move the release to a new key, with the new key and --rotation)", path.display())]
    KeyMismatch {
        /// The release directory.
        path: PathBuf,
        /// Key id in the current index.
        current: KeyId,
        /// Key id of the key given.
        given: KeyId,
    },
    /// The key given was retired by a rotation of this release.
    #[error("{}: key {given} was retired by the rotation to {current}, which signs this release now; publish with {current}", path.display())]
    RetiredKey {
        /// The release directory.
        path: PathBuf,
        /// Key id in the current index.
        current: KeyId,
        /// The retired key given.
        given: KeyId,
    },
    /// A rotation that cannot be applied.
    #[error("{}: {reason}", path.display())]
    Rotation {
        /// The release directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No base URL on a first publish.
    #[error("{}: a first publish needs --base-url (the http(s) URL the release will be served from; transfer files point into it)", path.display())]
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
    /// A validity period that is zero or longer than [`crate::timestamp::MAX_VALIDITY`].
    #[error("{}: the index must be valid for between 1 second and 10 years, not {}s", path.display(), valid_for.as_secs())]
    Validity {
        /// The release.
        path: PathBuf,
        /// What was asked for.
        valid_for: Duration,
    },
    /// A registry operation failed.
    #[error(transparent)]
    Registry(#[from] crate::oci::OciError),
    /// Reading the release being mirrored failed, or it does not verify.
    #[error("{location}: {reason}")]
    Source {
        /// Path or URL in the source release.
        location: String,
        /// Why.
        reason: String,
    },
    /// Testing hook.
    #[error("injected failure after step {0:?}")]
    Injected(Step),
}

/// A release being published to: where the current index comes from and where the next
/// generation is staged.
pub trait Target {
    /// The release, for messages.
    fn name(&self) -> PathBuf;

    /// Waits for and takes the release's publish lock, held until the guard is dropped.
    fn lock(&self) -> Result<Box<dyn std::any::Any>, PublishError>;

    /// The current index, verified with `key` (the publishing key, or the key a rotation
    /// retires); `None` for a new release. An index naming another key is
    /// [`PublishError::KeyMismatch`].
    fn current(&self, key: &PublicKey) -> Result<Option<Index>, PublishError>;

    /// A directory that survives an interrupted run, where a mirror keeps verified downloads
    /// until they are committed (`None`: a temporary directory will do).
    fn incoming_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Starts staging generation `serial` (removing what crashed publishes left behind).
    fn stage(&self, serial: u64, previous: Option<&Index>) -> Result<Box<dyn Stage + '_>, PublishError>;

    /// Undoes what a failed first publish created, so that nothing at all is left behind.
    fn abandon_first(&self) {}
}

/// A generation being staged. Nothing in it is visible to readers until [`Stage::commit`].
pub trait Stage {
    /// Carries a published image (and its signature) over from the current generation,
    /// checking that its size and digest are still what the index says.
    fn carry(&mut self, artifact: &Artifact) -> Result<(), PublishError>;

    /// Adds a new image with its detached signature.
    fn add_image(&mut self, artifact: &Artifact, bytes: &[u8], signature: &[u8]) -> Result<(), PublishError>;

    /// Adds a new image from a verified file on this machine (which the stage may link or
    /// move rather than copy).
    fn add_image_file(&mut self, artifact: &Artifact, path: &Path, signature: &[u8]) -> Result<(), PublishError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        self.add_image(artifact, &bytes, signature)
    }

    /// Puts a second name for an image already staged (`<ext>/<image>`, where transfer files
    /// point).
    fn alias(&mut self, path: &str, image: &ImageName) -> Result<(), PublishError>;

    /// Writes a small file (a checksum list, a signature, a transfer file, the index).
    fn write(&mut self, path: &str, bytes: &[u8]) -> Result<(), PublishError>;

    /// Makes the staged generation the current release, then drops old generations; `fail`
    /// is the failure-injection hook for the steps from [`Step::Commit`] on.
    fn commit(
        self: Box<Self>,
        expected: &BTreeMap<String, Entry>,
        keep: usize,
        fail: &dyn Fn(Step) -> Result<(), PublishError>,
    ) -> Result<PathBuf, PublishError>;
}

/// For [`Target::current`]: the error when the current index is not signed by `key`,
/// [`PublishError::RetiredKey`] if its rotations retired `key`.
pub fn check_signer(index: &Index, key: &PublicKey, release: &Path) -> Result<(), PublishError> {
    let (current, given) = (index.key_id, key.key_id());
    if current == given {
        return Ok(());
    }
    let path = release.to_owned();
    if index.key_rotations.iter().any(|r| r.old_key == *key) {
        Err(PublishError::RetiredKey { path, current, given })
    } else {
        Err(PublishError::KeyMismatch { path, current, given })
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PublishError + '_ {
    move |cause| PublishError::Io { path: path.to_owned(), cause }
}

/// Checks that an image carried over from the current release at `path` is still what the
/// index says (size and SHA-256): one changed on disk since it was published would otherwise
/// be published again, and with shared inodes, break every kept generation at once.
pub(crate) fn check_carried(path: &Path, art: &Artifact) -> Result<(), PublishError> {
    let changed = |reason: String| PublishError::CurrentInvalid { path: path.to_owned(), reason };
    let got = Digests::of_reader(File::open(path).map_err(io_err(path))?).map_err(io_err(path))?;
    if got.size != art.size {
        return Err(changed(format!("{} bytes, index.json says {}", got.size, art.size)));
    }
    if got.sha256 != art.sha256 {
        return Err(changed(format!(
            "sha256 {} but index.json says {}; a published image was modified on disk",
            got.sha256, art.sha256
        )));
    }
    Ok(())
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

/// Publishes `images` into the release directory `opts.release_dir`. See the module docs for
/// the guarantees.
pub fn publish(images: &[NewImage], opts: &PublishOptions<'_>) -> Result<Published, PublishError> {
    publish_to(&DirTarget::new(opts.release_dir)?, images, opts)
}

/// Publishes `images` to `target`.
pub fn publish_to(
    target: &dyn Target,
    images: &[NewImage],
    opts: &PublishOptions<'_>,
) -> Result<Published, PublishError> {
    let result = publish_locked(target, images, opts);
    if result.is_err() {
        target.abandon_first();
    }
    result
}

fn publish_locked(
    target: &dyn Target,
    images: &[NewImage],
    opts: &PublishOptions<'_>,
) -> Result<Published, PublishError> {
    let fail = |step: Step| if opts.fail_after == Some(step) { Err(PublishError::Injected(step)) } else { Ok(()) };
    if opts.valid_for.as_secs() == 0 || opts.valid_for > crate::timestamp::MAX_VALIDITY {
        return Err(PublishError::Validity { path: target.name(), valid_for: opts.valid_for });
    }
    let _lock = target.lock()?;
    let signer = opts.key.public();
    let rotation_err = |reason: String| PublishError::Rotation { path: target.name(), reason };
    if let Some(r) = opts.rotation {
        if r.new_key != signer {
            return Err(rotation_err(format!(
                "the rotation record vouches for key {}, but the key given is {}",
                r.new_key.key_id(),
                signer.key_id()
            )));
        }
        if !r.verifies() || r.old_key == r.new_key {
            return Err(rotation_err(format!(
                "the rotation record is not signed by {}, the key it retires",
                r.old_key.key_id()
            )));
        }
    }
    let verify_with = opts.rotation.map_or(&signer, |r| &r.old_key);
    let previous = match target.current(verify_with) {
        Err(PublishError::KeyMismatch { current, given, .. } | PublishError::RetiredKey { current, given, .. })
            if opts.rotation.is_some() && current == signer.key_id() =>
        {
            return Err(rotation_err(format!(
                "the release is already signed by {current} (rotated from {given}); publish without --rotation"
            )))
        }
        Err(PublishError::KeyMismatch { current, given, .. } | PublishError::RetiredKey { current, given, .. })
            if opts.rotation.is_some() =>
        {
            return Err(rotation_err(format!(
                "the rotation record retires key {given}, but the release is signed by {current}; only the key that signs a release can vouch for its successor"
            )))
        }
        other => other?,
    };
    if opts.rotation.is_some() && previous.is_none() {
        return Err(rotation_err("a first publish has no key to rotate from; publish without --rotation".into()));
    }
    let mut key_rotations = previous.as_ref().map(|p| p.key_rotations.clone()).unwrap_or_default();
    key_rotations.extend(opts.rotation.cloned());
    crate::rotation::check_chain(&key_rotations, signer.key_id()).map_err(rotation_err)?;
    let openpgp = (opts.openpgp || previous.as_ref().is_some_and(|p| p.openpgp_fingerprint.is_some()))
        .then(|| OpenPgpKey::derive(opts.key));
    let serial = previous.as_ref().map_or(1, |p| p.serial + 1);
    let base_url = match (&opts.base_url, &previous) {
        (Some(u), _) => u.clone(),
        (None, Some(p)) => p.base_url.clone(),
        (None, None) => return Err(PublishError::NeedBaseUrl { path: target.name() }),
    };
    let (fresh, unchanged) = validate(images, previous.as_ref())?;

    let mut stage = target.stage(serial, previous.as_ref())?;
    fail(Step::Prepare)?;

    let mut index = Index {
        schema_version: SCHEMA_VERSION,
        serial,
        generated_at: opts.now,
        expires: opts.now.after(opts.valid_for),
        key_id: opts.key.key_id(),
        key_rotations,
        openpgp_fingerprint: openpgp.as_ref().map(OpenPgpKey::fingerprint),
        base_url,
        extensions: previous.as_ref().map(|p| p.extensions.clone()).unwrap_or_default(),
        transfer_files: BTreeMap::new(),
    };
    for (_, _, _, art) in previous.iter().flat_map(|p| p.artifacts()) {
        stage.carry(art)?;
    }
    fail(Step::LinkPrevious)?;

    let mut added = Vec::new();
    for c in &fresh {
        // Read once: the bytes hashed, signed and staged are the same bytes.
        let bytes = std::fs::read(&c.image.path).map_err(io_err(&c.image.path))?;
        let digests = Digests::of(&bytes);
        let artifact = Artifact {
            file: c.name.clone(),
            size: digests.size,
            sha256: digests.sha256,
            sha512: digests.sha512,
            extension_release: c.image.extension_release.clone(),
            inputs: c.image.inputs.clone(),
        };
        stage.add_image(&artifact, &bytes, &opts.key.sign(&bytes))?;
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
        match entry {
            Entry::Image(name) if path.contains('/') => stage.alias(path, name)?,
            Entry::Sums(text) => {
                stage.write(path, text.as_bytes())?;
                stage.write(&layout::sig(path), &opts.key.sign(text.as_bytes()))?;
                if let Some(pgp) = &openpgp {
                    let created = u32::try_from(opts.now.unix()).unwrap_or(u32::MAX);
                    stage.write(&layout::gpg(path), &pgp.sign_detached(text.as_bytes(), created))?;
                }
            }
            Entry::Keyring => {
                let pgp = openpgp.as_ref().expect("the layout lists keyrings only for OpenPGP releases");
                stage.write(path, &pgp.cert().to_keyring())?;
            }
            _ => {}
        }
    }
    fail(Step::WriteSums)?;

    for (path, text) in layout::transfer_files(&index) {
        stage.write(&path, text.as_bytes())?;
        index.transfer_files.insert(path, Sha256Digest::of(text.as_bytes()));
    }
    fail(Step::WriteTransfers)?;

    let json = index.to_json();
    stage.write(layout::INDEX, json.as_bytes())?;
    stage.write(&layout::sig(layout::INDEX), &opts.key.sign(json.as_bytes()))?;
    fail(Step::WriteIndex)?;

    let generation = stage.commit(&expected, opts.keep_generations.max(2), &fail)?;
    Ok(Published { index, generation, added, unchanged })
}
