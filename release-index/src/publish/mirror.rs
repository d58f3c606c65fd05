//! `mirror`: copy a signed release from any [`Backend`] into any [`Target`], verifying every
//! file against the publisher's key first and keeping the publisher's signatures.
//!
//! The copy goes through the same [`Stage`](super::Stage)s as a publish, so a directory destination gets a
//! new generation swapped in atomically and a registry gets its `index` tag moved last. Only
//! what the destination lacks is transferred: images its current release already has are
//! carried over (hard links, or a check that the registry still has them), and a registry
//! skips blobs it already holds. Verified downloads wait in the target's incoming directory
//! (`<release>.generations/.incoming` for directories) until they are committed, so an
//! interrupted mirror resumes where it stopped. Order of the copy: images and their
//! signatures, then the checksum lists with theirs, the transfer files, and last
//! `index.json.sig` and `index.json` (see docs/static-hosting.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use signing::openpgp::{Cert, Fingerprint};
use signing::{Digests, PublicKey};
use sysext_model::ImageName;

use super::{io_err, PublishError, Step, Target};
use crate::client::Client;
use crate::index::{Artifact, Index, MAX_INDEX_BYTES};
use crate::layout::{self, Entry};
use crate::source::Backend;
use crate::timestamp::Timestamp;

/// Largest checksum list, transfer file or signature read.
const MAX_SMALL_FILE: u64 = 4 << 20;

/// How to mirror.
#[derive(Debug)]
pub struct MirrorOptions<'a> {
    /// The publisher's public key, or one the release was rotated from (its key rotations
    /// lead from there to the key that signs it now): the source must verify with that key,
    /// and so must the destination's current release (or with a key the source rotated from).
    pub pubkey: &'a PublicKey,
    /// The time to judge expiry by.
    pub now: Timestamp,
    /// Refuse a source index with a lower serial.
    pub min_serial: Option<u64>,
    /// Generations a directory destination keeps (at least 2).
    pub keep_generations: usize,
    /// Testing hook: fail after this many images were copied.
    pub fail_after_images: Option<usize>,
}

/// What a mirror did.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mirrored {
    /// The serial now at the destination.
    pub serial: u64,
    /// Where the new release is (generation directory or release manifest), if one was made.
    pub generation: Option<PathBuf>,
    /// Images transferred.
    #[serde(serialize_with = "names")]
    pub copied: Vec<ImageName>,
    /// Images the destination already had.
    #[serde(serialize_with = "names")]
    pub kept: Vec<ImageName>,
    /// Images taken from an interrupted earlier run instead of downloading them again.
    #[serde(serialize_with = "names")]
    pub resumed: Vec<ImageName>,
    /// The destination already had this very release.
    pub up_to_date: bool,
}

fn names<S: serde::Serializer>(v: &[ImageName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

fn source_err(location: String, reason: impl Into<String>) -> PublishError {
    PublishError::Source { location, reason: reason.into() }
}

/// Reads a small file of the source that must be there.
fn read_small(src: &dyn Backend, path: &str, limit: u64) -> Result<Vec<u8>, PublishError> {
    src.read(path, limit)
        .map_err(|e| source_err(e.location, e.cause))?
        .ok_or_else(|| source_err(src.location(path), "listed in the signed index but missing"))
}

fn verify_sig(src: &dyn Backend, key: &PublicKey, path: &str, data: &[u8]) -> Result<Vec<u8>, PublishError> {
    verify_sig_by(src, std::slice::from_ref(key), path, data)
}

/// Like [`verify_sig`], accepting a signature by any of `keys` (the first named in errors).
fn verify_sig_by(src: &dyn Backend, keys: &[PublicKey], path: &str, data: &[u8]) -> Result<Vec<u8>, PublishError> {
    let sig_path = layout::sig(path);
    let sig = read_small(src, &sig_path, MAX_SMALL_FILE)?;
    if !keys.iter().any(|k| k.verify(data, &sig)) {
        return Err(source_err(
            src.location(&sig_path),
            format!("signature does not verify with key {}; refusing to copy the release", keys[0].key_id()),
        ));
    }
    Ok(sig)
}

/// The source index's signature, checked with the key it resolved to.
struct Signed<'a> {
    signer: &'a PublicKey,
    bytes: &'a [u8],
    sig: &'a [u8],
}

/// Reads the source's OpenPGP keyring (both names, which must be the same bytes) and checks
/// it holds exactly the key the signed index names.
fn read_keyring(src: &dyn Backend, want: Fingerprint) -> Result<(Vec<Cert>, Vec<u8>), PublishError> {
    let [first, second] = layout::KEYRINGS;
    let bytes = read_small(src, first, MAX_SMALL_FILE)?;
    if read_small(src, second, MAX_SMALL_FILE)? != bytes {
        return Err(source_err(src.location(second), format!("differs from {first}; refusing to copy the release")));
    }
    let certs =
        Cert::parse_release_keyring(&bytes, want).map_err(|e| source_err(src.location(first), e.to_string()))?;
    Ok((certs, bytes))
}

/// Whether `path` holds exactly `art` (a download kept from an interrupted run).
fn holds(path: &Path, art: &Artifact) -> bool {
    let Ok(file) = fs::File::open(path) else { return false };
    Digests::of_reader(file).is_ok_and(|d| d.size == art.size && d.sha256 == art.sha256 && d.sha512 == art.sha512)
}

/// The order files are written in: images first, the index last.
fn rank(entry: &Entry) -> u8 {
    match entry {
        Entry::Image(_) | Entry::ImageSig(_) => 0,
        Entry::Sums(_) => 1,
        Entry::Transfer(_) => 2,
        Entry::Keyring => 1,
        Entry::Sig(_) | Entry::OpenPgpSig(_) => 3,
        Entry::Index => 4,
    }
}

/// Copies the release `src` serves into `target`. See the module docs.
pub fn mirror(src: Arc<dyn Backend>, target: &dyn Target, opts: &MirrorOptions<'_>) -> Result<Mirrored, PublishError> {
    // The index first, verified exactly as a client would, from the very bytes copied: with
    // the key given, or the key its key rotations lead to from there.
    let index_bytes = read_small(src.as_ref(), layout::INDEX, MAX_INDEX_BYTES)?;
    let location = src.location(layout::INDEX);
    let index = match Index::parse(&index_bytes) {
        Ok(index) => index,
        Err(e) => {
            // Garbage the publisher never signed is reported as such.
            verify_sig(src.as_ref(), opts.pubkey, layout::INDEX, &index_bytes)?;
            return Err(source_err(location, e.to_string()));
        }
    };
    let (signer, _) = crate::rotation::resolve(opts.pubkey, &Default::default(), index.key_id, &index.key_rotations)
        .map_err(|e| source_err(location.clone(), e.to_string()))?;
    let index_sig = verify_sig(src.as_ref(), &signer, layout::INDEX, &index_bytes)?;
    if index.expires <= opts.now {
        return Err(source_err(
            location,
            format!("expired at {} (now {}); the publisher must republish it", index.expires, opts.now),
        ));
    }
    if let Some(min) = opts.min_serial.filter(|m| index.serial < *m) {
        return Err(source_err(location, format!("serial {} is lower than {min}; refusing a rollback", index.serial)));
    }

    let _lock = target.lock()?;
    // The destination may still hold a release signed by a key the source rotated away from.
    let previous = match target.current(&signer) {
        Err(PublishError::KeyMismatch { current, .. } | PublishError::RetiredKey { current, .. }) => {
            match index.key_rotations.iter().find(|r| r.old_key.key_id() == current) {
                Some(r) => target.current(&r.old_key)?,
                None => return Err(PublishError::KeyMismatch { path: target.name(), current, given: signer.key_id() }),
            }
        }
        other => other?,
    };
    if let Some(prev) = &previous {
        if prev.serial > index.serial {
            return Err(PublishError::NotARelease {
                path: target.name(),
                reason: format!(
                    "has serial {}, newer than the source's {}; refusing to roll it back",
                    prev.serial, index.serial
                ),
            });
        }
        if prev.serial == index.serial {
            if *prev == index {
                return Ok(Mirrored {
                    serial: index.serial,
                    generation: None,
                    copied: Vec::new(),
                    kept: index.artifacts().map(|(_, _, _, a)| a.file.clone()).collect(),
                    resumed: Vec::new(),
                    up_to_date: true,
                });
            }
            return Err(PublishError::NotARelease {
                path: target.name(),
                reason: format!(
                    "has serial {} with other content than the source's; refusing a forked release",
                    prev.serial
                ),
            });
        }
    }

    let signed = Signed { signer: &signer, bytes: &index_bytes, sig: &index_sig };
    let result = copy(src, target, opts, &index, &signed, previous.as_ref());
    if result.is_err() {
        let keeps_downloads = target
            .incoming_dir()
            .and_then(|d| fs::read_dir(d).ok())
            .is_some_and(|mut entries| entries.next().is_some());
        if !keeps_downloads {
            target.abandon_first();
        }
    }
    result
}

fn copy(
    src: Arc<dyn Backend>,
    target: &dyn Target,
    opts: &MirrorOptions<'_>,
    index: &Index,
    signed: &Signed<'_>,
    previous: Option<&Index>,
) -> Result<Mirrored, PublishError> {
    let key = signed.signer;
    // An image keeps the signature it was published with, so it may be by a key rotated from.
    let image_keys: Vec<PublicKey> =
        std::iter::once(key.clone()).chain(index.key_rotations.iter().rev().map(|r| r.old_key.clone())).collect();
    let keyring = match index.openpgp_fingerprint {
        Some(fp) => Some(read_keyring(src.as_ref(), fp)?),
        None => None,
    };
    let fail = |step: Step| -> Result<(), PublishError> { Err(PublishError::Injected(step)) };
    let no_fail = |_: Step| Ok(());
    let incoming_tmp;
    let incoming = match target.incoming_dir() {
        Some(d) => {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
            d
        }
        None => {
            incoming_tmp = tempfile::tempdir().map_err(io_err(Path::new("$TMPDIR")))?;
            incoming_tmp.path().to_owned()
        }
    };
    let client = Client::new(src.clone(), key.clone(), None);
    let mut stage = target.stage(index.serial, previous)?;
    let expected = layout::expected(index);
    let mut ordered: Vec<(&String, &Entry)> = expected.iter().collect();
    ordered.sort_by_key(|(path, entry)| (rank(entry), path.contains('/'), (*path).clone()));

    let mut out = Mirrored {
        serial: index.serial,
        generation: None,
        copied: Vec::new(),
        kept: Vec::new(),
        resumed: Vec::new(),
        up_to_date: false,
    };
    for (path, entry) in ordered {
        match entry {
            Entry::Image(name) if !path.contains('/') => {
                let art = index.artifact(name).expect("the layout lists indexed images");
                if previous.and_then(|p| p.artifact(name)) == Some(art) {
                    stage.carry(art)?;
                    out.kept.push(name.clone());
                    continue;
                }
                let local = incoming.join(name.to_string());
                if holds(&local, art) {
                    out.resumed.push(name.clone());
                } else {
                    client.fetch_artifact(art, &incoming).map_err(|e| source_err(src.location(path), e.to_string()))?;
                }
                let bytes = fs::read(&local).map_err(io_err(&local))?;
                let sig = verify_sig_by(src.as_ref(), &image_keys, path, &bytes)?;
                drop(bytes);
                stage.add_image_file(art, &local, &sig)?;
                out.copied.push(name.clone());
                if opts.fail_after_images.is_some_and(|n| out.copied.len() >= n) {
                    fail(Step::CopyImages)?;
                }
            }
            Entry::Image(name) => stage.alias(path, name)?,
            Entry::ImageSig(_) => {} // with its image
            Entry::Sums(text) => {
                let bytes = read_small(src.as_ref(), path, MAX_SMALL_FILE)?;
                if bytes != text.as_bytes() {
                    return Err(source_err(
                        src.location(path),
                        "differs from the checksum list the signed index describes",
                    ));
                }
                let sig = verify_sig(src.as_ref(), key, path, &bytes)?;
                stage.write(path, &bytes)?;
                stage.write(&layout::sig(path), &sig)?;
                if let Some((certs, _)) = &keyring {
                    let gpg_path = layout::gpg(path);
                    let gpg = read_small(src.as_ref(), &gpg_path, MAX_SMALL_FILE)?;
                    Cert::verify_detached(certs, &bytes, &gpg).map_err(|e| {
                        source_err(src.location(&gpg_path), format!("{e}; refusing to copy the release"))
                    })?;
                    stage.write(&gpg_path, &gpg)?;
                }
            }
            Entry::Keyring => {
                let (_, bytes) = keyring.as_ref().expect("the layout lists keyrings only for OpenPGP releases");
                stage.write(path, bytes)?;
            }
            Entry::Transfer(text) => {
                let bytes = read_small(src.as_ref(), path, MAX_SMALL_FILE)?;
                let listed = index.transfer_files.get(path.as_str());
                if bytes != text.as_bytes() || listed.is_some_and(|d| *d != signing::Sha256Digest::of(&bytes)) {
                    return Err(source_err(
                        src.location(path),
                        "differs from the transfer file the signed index describes",
                    ));
                }
                stage.write(path, &bytes)?;
            }
            Entry::Sig(_) | Entry::OpenPgpSig(_) => {} // with the file it signs
            Entry::Index => {
                stage.write(&layout::sig(layout::INDEX), signed.sig)?;
                stage.write(layout::INDEX, signed.bytes)?;
            }
        }
    }
    let generation = stage.commit(&expected, opts.keep_generations.max(2), &no_fail)?;
    out.generation = Some(generation);
    if target.incoming_dir().is_some() {
        for name in out.copied.iter().chain(&out.resumed) {
            let _ = fs::remove_file(incoming.join(name.to_string()));
        }
        let _ = fs::remove_dir(&incoming);
    }
    Ok(out)
}
