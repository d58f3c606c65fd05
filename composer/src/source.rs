//! Where extension images come from, and turning each `--extension` argument into a verified
//! local file with its parsed identity.
//!
//! A local file is read once: its bytes are signature-checked (with `--pubkey`), hashed and
//! written into a private copy, and that copy is what gets inspected and installed, so a file
//! changed on disk half-way cannot slip past the checks. A channel (`kubernetes@1.31`) is
//! looked up in a signed release index opened once per run ([`ReleaseIndex`]): signature,
//! expiry and serial checked, the newest matching version for the target's architecture
//! chosen, and the artifact downloaded with its size and digests verified while it streams.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use release_index::client::{Accepted, Client, ClientError, TrustedIndex};
use release_index::image::ImageError;
use release_index::index::Artifact;
use release_index::source::Backend;
use serde::Serialize;
use signing::{KeyId, PublicKey, Sha256Digest};
use sysext_model::{Arch, BaseUrl, ChannelRef, ExtensionRelease, ImageName};

use crate::scratch::ScratchDir;

/// One `--extension` argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtensionSource {
    /// A local image file named `<name>-<version>-<arch>.raw`.
    File(PathBuf),
    /// `NAME@CHANNEL`, resolved through the signed release index.
    Channel(#[serde(serialize_with = "as_display")] ChannelRef),
}

/// Why an `--extension` argument is not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid extension '{given}': {reason}")]
pub struct SourceParseError {
    given: String,
    reason: String,
}

impl FromStr for ExtensionSource {
    type Err = SourceParseError;

    /// `NAME@CHANNEL` when it looks like one (no `/`, no `.raw` suffix); otherwise a path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| SourceParseError { given: s.to_owned(), reason };
        if s.is_empty() {
            return Err(err("empty".into()));
        }
        if s.contains('@') && !s.contains('/') && !s.ends_with(".raw") {
            let channel: ChannelRef = s.parse().map_err(|e: sysext_model::ChannelRefParseError| err(e.to_string()))?;
            return Ok(ExtensionSource::Channel(channel));
        }
        Ok(ExtensionSource::File(PathBuf::from(s)))
    }
}

impl fmt::Display for ExtensionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionSource::File(p) => write!(f, "{}", p.display()),
            ExtensionSource::Channel(c) => c.fmt(f),
        }
    }
}

/// A signed release index opened for `NAME@CHANNEL` sources (`--index`): fetched once per
/// run, its signature checked with `--pubkey` before it is parsed, refused once expired or
/// when its serial is below `--min-serial`.
#[derive(Debug)]
pub struct ReleaseIndex {
    client: Client,
    trusted: TrustedIndex,
}

impl ReleaseIndex {
    /// Fetches and verifies the index of the release `source` reads.
    pub fn open(source: Arc<dyn Backend>, pubkey: PublicKey, min_serial: Option<u64>) -> Result<Self, SourceError> {
        // No state file: building disk images is not a node following a release; a caller
        // who has seen a serial passes it as the floor instead.
        Self::open_after(source, pubkey, min_serial, None, BTreeSet::new())
    }

    /// Like [`ReleaseIndex::open`], also refusing an index older than (or forked from) one
    /// accepted before, which the caller (the node agent) keeps in its own state, and one
    /// signed by a key in `retired` (retired by rotations followed through other locations).
    pub fn open_after(
        source: Arc<dyn Backend>,
        pubkey: PublicKey,
        min_serial: Option<u64>,
        accepted: Option<Accepted>,
        retired: BTreeSet<KeyId>,
    ) -> Result<Self, SourceError> {
        let client =
            Client::new(source, pubkey, None).with_min_serial(min_serial).with_accepted(accepted).with_retired(retired);
        let trusted = client.fetch_index()?;
        Ok(Self { client, trusted })
    }

    /// The release the index was read from.
    pub fn source(&self) -> &dyn Backend {
        self.client.source()
    }

    /// The release's OpenPGP keyring for stock systemd-sysupdate (`import-pubring.gpg`), when
    /// the signed index names an OpenPGP key: read and checked to hold exactly that key, so
    /// nodes that follow the release with sysupdate can get `Verify=yes`.
    pub fn openpgp_keyring(&self) -> Result<Option<Vec<u8>>, SourceError> {
        let Some(want) = self.trusted.index.openpgp_fingerprint else { return Ok(None) };
        let name = release_index::layout::KEYRINGS[0];
        let source = self.client.source();
        let bad = |reason: String| SourceError::Keyring { location: source.location(name), reason };
        let bytes = source
            .read(name, 1 << 20)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("missing, though the signed index names an OpenPGP key".into()))?;
        signing::openpgp::Cert::parse_release_keyring(&bytes, want).map_err(|e| bad(e.to_string()))?;
        Ok(Some(bytes))
    }

    /// Downloads `artifact` into `dest_dir`, size and digests checked against the signed
    /// index while it streams (the file appears only once verified, synced), then checks
    /// that the image says what the index says: its extension-release fields.
    pub fn download(&self, artifact: &Artifact, dest_dir: &Path) -> Result<(PathBuf, ExtensionRelease), SourceError> {
        let path = self.client.fetch_artifact(artifact, dest_dir)?;
        let identity = release_index::image::identity(&path, &artifact.file)?;
        if identity.extension_release != artifact.extension_release {
            return Err(SourceError::IndexMismatch {
                path,
                inside: identity.extension_release.fields().clone(),
                indexed: artifact.extension_release.fields().clone(),
            });
        }
        Ok((path, identity.extension_release))
    }

    /// The URL the release is served from, as the signed index states it.
    pub fn base_url(&self) -> &BaseUrl {
        &self.trusted.index.base_url
    }

    /// The index's serial.
    pub fn serial(&self) -> u64 {
        self.trusted.index.serial
    }

    /// The verified index.
    pub fn trusted(&self) -> &TrustedIndex {
        &self.trusted
    }

    /// Where the release was read from.
    pub fn location(&self) -> String {
        self.client.source().name()
    }

    /// Whether the release is in an OCI registry (artifacts have blob URLs, no file layout).
    pub fn in_registry(&self) -> bool {
        self.client.source().blob_url(&Sha256Digest::of(b"")).is_some()
    }

    /// A URL any HTTP client can fetch the artifact with this sha256 from, when the release is
    /// in a registry (its blob URL); `None` for directories and HTTP servers.
    pub fn blob_url(&self, sha256: &Sha256Digest) -> Option<String> {
        self.client.source().blob_url(sha256)
    }

    /// The newest artifact of `channel` for `arch`, without downloading it; the error lists
    /// what the index has instead.
    pub fn lookup(&self, channel: &ChannelRef, arch: Arch) -> Result<&Artifact, SourceError> {
        let index = &self.trusted.index;
        if let Some((_, artifact)) = index.resolve(&channel.name, &channel.channel, arch) {
            return Ok(artifact);
        }
        let Some(versions) = index.extensions.get(&channel.name) else {
            let names: Vec<String> = index.extensions.keys().map(ToString::to_string).collect();
            return Err(SourceError::UnknownExtension {
                channel: channel.clone(),
                serial: index.serial,
                available: if names.is_empty() { "none".into() } else { names.join(", ") },
            });
        };
        let available: Vec<String> =
            versions.iter().filter(|(_, a)| a.contains_key(&arch)).map(|(v, _)| v.to_string()).collect();
        Err(SourceError::NoMatch {
            channel: channel.clone(),
            arch,
            serial: index.serial,
            available: if available.is_empty() { "none".into() } else { available.join(", ") },
        })
    }
}

/// What [`resolve`] needs besides the source.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResolveOptions<'a> {
    /// Require and check `<file>.sig` (local files) or the index signature (channels).
    pub pubkey: Option<&'a PublicKey>,
    /// The release index for `NAME@CHANNEL` sources.
    pub index: Option<&'a ReleaseIndex>,
    /// The target image's architecture, which selects a channel's artifact. Local files are
    /// not filtered by it: the compatibility check reports a mismatch with the reason.
    pub arch: Option<Arch>,
}

/// An extension image ready to install: a verified private copy and what it declares.
#[derive(Clone, Debug, Serialize)]
pub struct ResolvedExtension {
    /// The argument it came from.
    pub source: ExtensionSource,
    /// The image as given (local files, made absolute) or as downloaded (channels).
    pub path: PathBuf,
    /// The verified private copy that is installed: the bytes the checks saw.
    #[serde(skip)]
    pub verified_copy: PathBuf,
    /// Name, version and architecture (from the file name, cross-checked with the image).
    #[serde(serialize_with = "as_display")]
    pub image: ImageName,
    /// `/usr/lib/extension-release.d/extension-release.<name>` inside the image.
    pub extension_release: ExtensionRelease,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the file.
    pub sha256: Sha256Digest,
    /// sha512 of the file.
    #[serde(skip)]
    pub sha512: signing::Sha512Digest,
    /// Key id of the signature that was checked, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    /// The private directory holding `path`; removed when the last copy of this value is
    /// dropped.
    #[serde(skip)]
    pub scratch: Arc<ScratchDir>,
}

fn as_display<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Why an extension cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// The file name does not carry name, version and architecture.
    #[error("{}: {cause} (images are installed as <name>-<version>-<arch>.raw, e.g. kubernetes-v1.31.3-x86-64.raw)", path.display())]
    FileName {
        /// File.
        path: PathBuf,
        /// Parser message.
        cause: sysext_model::ImageNameParseError,
    },
    /// The signature did not verify.
    #[error(transparent)]
    Signature(#[from] signing::VerifyError),
    /// The image cannot be read or would not be merged.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// `NAME@CHANNEL` without `--index`.
    #[error("{channel}: a channel is looked up in a release index: pass --index URL|DIR and --pubkey PUB")]
    NeedsIndex {
        /// The requested channel.
        channel: ChannelRef,
    },
    /// The architecture of the target is needed to pick an artifact.
    #[error("{channel}: the target's architecture is unknown; pass --arch")]
    NeedsArch {
        /// The requested channel.
        channel: ChannelRef,
    },
    /// The index refused, or an artifact did not verify.
    #[error(transparent)]
    Index(#[from] ClientError),
    /// The release's OpenPGP keyring is missing or not the key its index names.
    #[error("{location}: {reason}")]
    Keyring {
        /// Where it was read.
        location: String,
        /// Why it is refused.
        reason: String,
    },
    /// The index has no such extension.
    #[error("{channel}: the index (serial {serial}) has no extension '{}'; available: {available}", channel.name)]
    UnknownExtension {
        /// The requested channel.
        channel: ChannelRef,
        /// Serial of the index searched.
        serial: u64,
        /// Extensions the index lists.
        available: String,
    },
    /// Nothing in the index matches.
    #[error("{channel}: no {arch} release in the index (serial {serial}) matches; available: {available}")]
    NoMatch {
        /// The requested channel.
        channel: ChannelRef,
        /// Target architecture.
        arch: Arch,
        /// Serial of the index searched.
        serial: u64,
        /// Versions published for that architecture.
        available: String,
    },
    /// The downloaded image says something else than the signed index.
    #[error("{}: its extension-release ({inside:?}) differs from the signed index ({indexed:?})", path.display())]
    IndexMismatch {
        /// Downloaded file.
        path: PathBuf,
        /// Fields inside the image.
        inside: std::collections::BTreeMap<String, String>,
        /// Fields the index lists.
        indexed: std::collections::BTreeMap<String, String>,
    },
}

/// Turns an `--extension` argument into a verified local image.
pub fn resolve(source: &ExtensionSource, opts: ResolveOptions<'_>) -> Result<ResolvedExtension, SourceError> {
    match source {
        ExtensionSource::File(path) => resolve_file(source, path, opts.pubkey),
        ExtensionSource::Channel(channel) => resolve_channel(channel, opts),
    }
}

fn scratch() -> Result<ScratchDir, SourceError> {
    ScratchDir::new_temp(crate::scratch::EXTENSION_PREFIX)
        .map_err(|cause| SourceError::Io { path: std::env::temp_dir(), cause })
}

/// Resolves `NAME@CHANNEL` through the signed index: the newest matching version for the
/// target's architecture, downloaded and verified against the index (size, SHA-256, SHA-512)
/// into a private directory, then read like a local file and cross-checked with the index.
pub fn resolve_channel(channel: &ChannelRef, opts: ResolveOptions<'_>) -> Result<ResolvedExtension, SourceError> {
    let index = opts.index.ok_or_else(|| SourceError::NeedsIndex { channel: channel.clone() })?;
    let arch = opts.arch.ok_or_else(|| SourceError::NeedsArch { channel: channel.clone() })?;
    let artifact = index.lookup(channel, arch)?;
    let dir = scratch()?;
    let (path, extension_release) = index.download(artifact, dir.path())?;
    Ok(ResolvedExtension {
        source: ExtensionSource::Channel(channel.clone()),
        verified_copy: path.clone(),
        path,
        image: artifact.file.clone(),
        extension_release,
        size: artifact.size,
        sha256: artifact.sha256,
        sha512: artifact.sha512,
        verified_by: Some(format!("{} (index serial {})", index.trusted.index.key_id, index.serial())),
        scratch: Arc::new(dir),
    })
}

fn resolve_file(
    source: &ExtensionSource,
    path: &Path,
    pubkey: Option<&PublicKey>,
) -> Result<ResolvedExtension, SourceError> {
    let io = |cause| SourceError::Io { path: path.to_owned(), cause };
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let image: ImageName = file_name.parse().map_err(|cause| SourceError::FileName { path: path.to_owned(), cause })?;
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    // One read: the bytes whose signature is checked are the bytes hashed and installed.
    let bytes = std::fs::read(path).map_err(io)?;
    let verified_by = match pubkey {
        Some(key) => {
            key.verify_detached(path, &bytes)?;
            Some(key.key_id().to_string())
        }
        None => None,
    };
    let digests = signing::Digests::of(&bytes);
    let dir = scratch()?;
    let copy = dir.path().join(&file_name);
    let mut out = std::fs::File::create_new(&copy).map_err(|cause| SourceError::Io { path: copy.clone(), cause })?;
    out.write_all(&bytes).map_err(|cause| SourceError::Io { path: copy.clone(), cause })?;
    drop(out);
    drop(bytes);
    let identity = release_index::image::read_as(&copy, path)?.identity(path, &image)?;
    Ok(ResolvedExtension {
        source: source.clone(),
        path: std::path::absolute(path).map_err(io)?,
        verified_copy: copy,
        image,
        extension_release: identity.extension_release,
        size: digests.size,
        sha256: digests.sha256,
        sha512: digests.sha512,
        verified_by,
        scratch: Arc::new(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_channels_and_paths() {
        let c: ExtensionSource = "kubernetes@1.31".parse().unwrap();
        assert_eq!(c, ExtensionSource::Channel("kubernetes@1.31".parse().unwrap()));
        assert_eq!(c.to_string(), "kubernetes@1.31");
        for p in ["out/kubernetes-v1.31.3-x86-64.raw", "./k@1.raw", "dir/x@y", "kubernetes-v1.31.3-x86-64.raw"] {
            assert!(matches!(p.parse::<ExtensionSource>().unwrap(), ExtensionSource::File(_)), "{p}");
        }
        assert!("kubernetes@".parse::<ExtensionSource>().is_err());
        assert!("Kube@1.31".parse::<ExtensionSource>().is_err());
        assert!("kubernetes@1 31".parse::<ExtensionSource>().is_err());
        assert!(matches!("cni@>=1.30, <1.32".parse::<ExtensionSource>().unwrap(), ExtensionSource::Channel(_)));
    }

    #[test]
    fn channels_need_an_index() {
        let c: ExtensionSource = "containerd@2.0".parse().unwrap();
        let err = resolve(&c, ResolveOptions::default()).unwrap_err().to_string();
        assert!(err.contains("containerd@2.0: a channel is looked up in a release index"), "{err}");
    }

    #[test]
    fn local_files_need_an_image_name() {
        let err = resolve(&"/tmp/kubernetes.raw".parse().unwrap(), ResolveOptions::default()).unwrap_err().to_string();
        assert!(err.contains("<name>-<version>-<arch>.raw"), "{err}");
    }
}
