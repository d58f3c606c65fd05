//! Where extension images come from, and turning each `--extension` argument into a verified
//! local file with its parsed identity.
//!
//! A local file is used as it is (its `.sig` checked when `--pubkey` is given). A channel
//! (`kubernetes@1.31`) is looked up in a signed release index opened once per run
//! ([`ReleaseIndex`]): signature and expiry checked, the newest matching version for the
//! target's architecture chosen, and the artifact downloaded with its size and digests
//! verified while it streams.

use std::fmt;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use backhand::{FilesystemReader, InnerNode};
use release_index::client::{Client, ClientError, TrustedIndex};
use release_index::extension_release::ExtensionRelease;
use release_index::index::{BaseUrl, Channel};
use release_index::source::ReleaseSource;
use release_index::{Arch, ExtensionName, ImageName};
use serde::Serialize;
use signing::{PublicKey, Sha256Digest};

/// A channel of an extension in a release index: `NAME@CHANNEL`, e.g. `kubernetes@1.31`
/// (the newest `v1.31.x`) or `containerd@2.0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelRef {
    /// Extension name.
    pub name: ExtensionName,
    /// Which versions: `1.31` (its patch releases), `~1.31`, `>=1.30, <1.32`, `v1.31.3`, `latest`.
    pub channel: Channel,
}

impl fmt::Display for ChannelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.channel)
    }
}

/// One `--extension` argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtensionSource {
    /// A local image file named `<name>-<version>-<arch>.raw`.
    File(PathBuf),
    /// `NAME@CHANNEL`, resolved through the signed release index.
    Channel(ChannelRef),
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
        match s.split_once('@') {
            Some((name, channel)) if !s.contains('/') && !s.ends_with(".raw") => {
                let name: ExtensionName =
                    name.parse().map_err(|e: release_index::NameParseError| err(e.to_string()))?;
                let channel: Channel =
                    channel.parse().map_err(|e: release_index::index::ChannelParseError| err(e.to_string()))?;
                Ok(ExtensionSource::Channel(ChannelRef { name, channel }))
            }
            _ => Ok(ExtensionSource::File(PathBuf::from(s))),
        }
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
/// run, its signature checked with `--pubkey` before it is parsed, and refused once expired.
#[derive(Debug)]
pub struct ReleaseIndex {
    client: Client,
    trusted: TrustedIndex,
}

impl ReleaseIndex {
    /// Fetches and verifies the index at `source` (a directory or an http(s) URL).
    pub fn open(source: ReleaseSource, pubkey: PublicKey) -> Result<Self, SourceError> {
        // No state file: building disk images is not a node following a release, so there is
        // no serial to hold it to; signature and expiry still apply.
        let client = Client::new(source, pubkey, None);
        let trusted = client.fetch_index()?;
        Ok(Self { client, trusted })
    }

    /// The URL the release is served from, as the signed index states it.
    pub fn base_url(&self) -> &BaseUrl {
        &self.trusted.index.base_url
    }

    /// The index's serial.
    pub fn serial(&self) -> u64 {
        self.trusted.index.serial
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

/// An extension image ready to install: a verified local file and what it declares.
#[derive(Clone, Debug, Serialize)]
pub struct ResolvedExtension {
    /// The argument it came from.
    pub source: ExtensionSource,
    /// The image file on this machine.
    pub path: PathBuf,
    /// Name, version and architecture (from the file name, cross-checked with the image).
    #[serde(serialize_with = "as_display")]
    pub image: ImageName,
    /// `/usr/lib/extension-release.d/extension-release.<name>` inside the image.
    pub extension_release: ExtensionRelease,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the file.
    pub sha256: Sha256Digest,
    /// Key id of the signature that was checked, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    /// The private directory a channel's artifact was downloaded into; removed when the last
    /// copy of this value is dropped.
    #[serde(skip)]
    pub download: Option<Arc<tempfile::TempDir>>,
}

fn as_display<S: serde::Serializer>(v: &ImageName, s: S) -> Result<S::Ok, S::Error> {
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
        cause: release_index::ImageNameParseError,
    },
    /// The signature did not verify.
    #[error(transparent)]
    Signature(#[from] signing::VerifyError),
    /// Not a squashfs image.
    #[error("{}: not a readable squashfs system extension image: {reason}", path.display())]
    NotSquashfs {
        /// File.
        path: PathBuf,
        /// Reader message.
        reason: String,
    },
    /// The release file systemd binds to the link name is missing.
    #[error("{}: has no {expected}; systemd-sysext 252 aborts every merge when an image lacks it (found: {found})", path.display())]
    MissingRelease {
        /// File.
        path: PathBuf,
        /// The path that must exist.
        expected: String,
        /// The extension-release files that do exist.
        found: String,
    },
    /// The release file does not parse.
    #[error("{}: {path_inside}: {cause}", path.display())]
    Release {
        /// File.
        path: PathBuf,
        /// Path of the release file inside the image.
        path_inside: String,
        /// Parser message.
        cause: String,
    },
    /// The image ships an os-release, which systemd refuses.
    #[error("{}: contains /usr/lib/os-release, which would shadow the host's; systemd-sysext refuses such images", path.display())]
    ShipsOsRelease {
        /// File.
        path: PathBuf,
    },
    /// File name and contents disagree.
    #[error("{}: the file name says {field}={named} but extension-release.{name} has {field}={inside}", path.display())]
    Mismatch {
        /// File.
        path: PathBuf,
        /// Extension name.
        name: ExtensionName,
        /// Field.
        field: &'static str,
        /// Value from the file name.
        named: String,
        /// Value inside.
        inside: String,
    },
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

/// Resolves `NAME@CHANNEL` through the signed index: the newest matching version for the
/// target's architecture, downloaded and verified against the index (size, SHA-256, SHA-512)
/// into a private directory, then read like a local file and cross-checked with the index.
pub fn resolve_channel(channel: &ChannelRef, opts: ResolveOptions<'_>) -> Result<ResolvedExtension, SourceError> {
    let index = opts.index.ok_or_else(|| SourceError::NeedsIndex { channel: channel.clone() })?;
    let arch = opts.arch.ok_or_else(|| SourceError::NeedsArch { channel: channel.clone() })?;
    let Some((_, artifact)) = index.trusted.index.resolve(&channel.name, &channel.channel, arch) else {
        let available: Vec<String> = index
            .trusted
            .index
            .extensions
            .get(&channel.name)
            .into_iter()
            .flat_map(|versions| versions.iter().filter(|(_, a)| a.contains_key(&arch)).map(|(v, _)| v.to_string()))
            .collect();
        return Err(SourceError::NoMatch {
            channel: channel.clone(),
            arch,
            serial: index.serial(),
            available: if available.is_empty() { "none".into() } else { available.join(", ") },
        });
    };
    let dir = tempfile::Builder::new()
        .prefix("composer-download-")
        .tempdir()
        .map_err(|cause| SourceError::Io { path: std::env::temp_dir(), cause })?;
    let path = index.client.fetch_artifact(artifact, dir.path())?;
    let image = artifact.file.clone();
    let extension_release = inspect_image(&path, &image)?;
    if extension_release != artifact.extension_release {
        return Err(SourceError::IndexMismatch {
            path,
            inside: extension_release.fields().clone(),
            indexed: artifact.extension_release.fields().clone(),
        });
    }
    Ok(ResolvedExtension {
        source: ExtensionSource::Channel(channel.clone()),
        path,
        image,
        extension_release,
        size: artifact.size,
        sha256: artifact.sha256,
        verified_by: Some(format!("{} (index serial {})", index.trusted.index.key_id, index.serial())),
        download: Some(Arc::new(dir)),
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
    let verified_by = match pubkey {
        Some(key) => {
            key.verify_file(path)?;
            Some(key.key_id().to_string())
        }
        None => None,
    };
    let sha256 = Sha256Digest::of_reader(std::fs::File::open(path).map_err(io)?).map_err(io)?;
    let extension_release = inspect_image(path, &image)?;
    // debugfs runs in a scratch directory, so a relative path would name another file there.
    let path = std::path::absolute(path).map_err(io)?;
    Ok(ResolvedExtension {
        source: source.clone(),
        path,
        image,
        extension_release,
        size: meta.len(),
        sha256,
        verified_by,
        download: None,
    })
}

/// Reads `extension-release.<name>` from a squashfs image and checks what systemd-sysext
/// would otherwise refuse at boot: a missing release file, a shipped os-release, and an
/// architecture that contradicts the file name.
pub fn inspect_image(path: &Path, image: &ImageName) -> Result<ExtensionRelease, SourceError> {
    let file = std::fs::File::open(path).map_err(|cause| SourceError::Io { path: path.to_owned(), cause })?;
    let fs = FilesystemReader::from_reader(BufReader::new(file))
        .map_err(|e| SourceError::NotSquashfs { path: path.to_owned(), reason: e.to_string() })?;
    let expected = format!("/usr/lib/extension-release.d/extension-release.{}", image.name);
    let mut found = Vec::new();
    let mut text = None;
    for node in fs.files() {
        let p = node.fullpath.to_string_lossy();
        if p == "/usr/lib/os-release" {
            return Err(SourceError::ShipsOsRelease { path: path.to_owned() });
        }
        if p.starts_with("/usr/lib/extension-release.d/extension-release.") {
            found.push(p.clone().into_owned());
        }
        if p == expected {
            if let InnerNode::File(f) = &node.inner {
                let mut buf = Vec::new();
                fs.file(f)
                    .reader()
                    .read_to_end(&mut buf)
                    .map_err(|cause| SourceError::Io { path: path.to_owned(), cause })?;
                text = Some(String::from_utf8_lossy(&buf).into_owned());
            }
        }
    }
    let Some(text) = text else {
        let found = if found.is_empty() { "none".to_owned() } else { found.join(", ") };
        return Err(SourceError::MissingRelease { path: path.to_owned(), expected, found });
    };
    let release = ExtensionRelease::parse(&text).map_err(|e| SourceError::Release {
        path: path.to_owned(),
        path_inside: expected.clone(),
        cause: e.to_string(),
    })?;
    if let Some(arch) = release.get("ARCHITECTURE").filter(|a| !a.is_empty() && *a != "_any") {
        if arch != image.arch.as_str() {
            return Err(SourceError::Mismatch {
                path: path.to_owned(),
                name: image.name.clone(),
                field: "ARCHITECTURE",
                named: image.arch.to_string(),
                inside: arch.to_owned(),
            });
        }
    }
    Ok(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_channels_and_paths() {
        let c: ExtensionSource = "kubernetes@1.31".parse().unwrap();
        assert_eq!(
            c,
            ExtensionSource::Channel(ChannelRef {
                name: "kubernetes".parse().unwrap(),
                channel: "1.31".parse().unwrap()
            })
        );
        assert_eq!(c.to_string(), "kubernetes@1.31");
        for p in ["out/kubernetes-v1.31.3-x86-64.raw", "./k@1.raw", "dir/x@y", "kubernetes-v1.31.3-x86-64.raw"] {
            assert!(matches!(p.parse::<ExtensionSource>().unwrap(), ExtensionSource::File(_)), "{p}");
        }
        assert!("kubernetes@".parse::<ExtensionSource>().is_err());
        assert!("Kube@1.31".parse::<ExtensionSource>().is_err());
        assert!("kubernetes@1 31".parse::<ExtensionSource>().is_err());
        assert!(">=1.30, <1.32".parse::<Channel>().is_ok());
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
