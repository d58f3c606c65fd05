//! Reading a system extension image back: what `bakery inspect` shows, what `bakery create`
//! checks before renaming, what `bakery publish` and `verify-release` compare with the index,
//! and what composer checks before installing. One reader, so they all see the same thing.
//!
//! It uses an independent squashfs reader (backhand), not bakery's writer's own structures,
//! so an image is judged the way a consumer would read it.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use backhand::{FilesystemReader, InnerNode};
use serde::Serialize;
use signing::Sha256Digest;
use sysext_model::{ExtensionRelease, ImageName};

use crate::inputs::InputsLock;

/// Where systemd-sysext reads an extension's identity, minus the name.
pub const RELEASE_PREFIX: &str = "/usr/lib/extension-release.d/extension-release.";

/// Why an image cannot be read or would not be merged.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading the file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// Not a squashfs image.
    #[error("{}: not a readable squashfs image: {reason}", path.display())]
    NotSquashfs {
        /// File.
        path: PathBuf,
        /// Reader message.
        reason: String,
    },
    /// A file inside the image is unreadable or malformed.
    #[error("{}: {inside}: {reason}", path.display())]
    Inside {
        /// File.
        path: PathBuf,
        /// Path inside the image.
        inside: String,
        /// Why.
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
        name: String,
        /// Field.
        field: &'static str,
        /// Value from the file name.
        named: String,
        /// Value inside.
        inside: String,
    },
    /// The inputs lock describes another image.
    #[error("{}: its inputs lock describes {extension} {version} {arch}, not the image its name says", path.display())]
    LockMismatch {
        /// File.
        path: PathBuf,
        /// What the lock says.
        extension: String,
        /// What the lock says.
        version: String,
        /// What the lock says.
        arch: String,
    },
}

/// One entry of an image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path.
    pub path: String,
    /// `file`, `dir`, `symlink`, `char-device`, `block-device`, `fifo` or `socket`.
    pub kind: &'static str,
    /// Permission bits in octal, e.g. `0755`.
    pub mode: String,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Size of regular files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Target of symlinks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What an image holds.
#[derive(Debug, Clone, Serialize)]
pub struct Contents {
    /// Compressor recorded in the superblock.
    pub compression: String,
    /// Data block size.
    pub block_size: u32,
    /// Superblock modification time.
    pub mtime: u32,
    /// `extension-release.*` files by extension name.
    pub extension_release: BTreeMap<String, ExtensionRelease>,
    /// Inputs locks (`/usr/share/sysext/*/inputs.json`) by extension name.
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// Whether it ships `/usr/lib/os-release`.
    #[serde(skip)]
    pub ships_os_release: bool,
    /// Every entry, sorted by path.
    pub entries: Vec<Entry>,
}

/// An image identified by its file name, checked the way systemd-sysext will check it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Name, version and architecture from the file name.
    pub image: ImageName,
    /// `extension-release.<name>`.
    pub extension_release: ExtensionRelease,
    /// The inputs lock, if the image has one (bakery's images do).
    pub inputs: Option<InputsLock>,
}

fn read_all(fs: &FilesystemReader<'_>, file: &backhand::SquashfsFileReader) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs.file(file).reader().read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads every entry of a squashfs image, with its release files and inputs locks.
pub fn read(path: &Path) -> Result<Contents, ImageError> {
    read_as(path, path)
}

/// Like [`read`], for a private copy of a file: errors name `shown`, the file the user gave.
pub fn read_as(path: &Path, shown: &Path) -> Result<Contents, ImageError> {
    let inside =
        |inside: &str, reason: String| ImageError::Inside { path: shown.to_owned(), inside: inside.into(), reason };
    let file = std::fs::File::open(path).map_err(|cause| ImageError::Io { path: shown.to_owned(), cause })?;
    let fs = FilesystemReader::from_reader(BufReader::new(file))
        .map_err(|e| ImageError::NotSquashfs { path: shown.to_owned(), reason: e.to_string() })?;
    let mut contents = Contents {
        compression: fs.compressor.map_or_else(|| "none".to_owned(), |c| format!("{c:?}").to_lowercase()),
        block_size: fs.block_size,
        mtime: fs.mod_time,
        extension_release: BTreeMap::new(),
        inputs: BTreeMap::new(),
        ships_os_release: false,
        entries: Vec::new(),
    };
    for node in fs.files() {
        let p = node.fullpath.to_string_lossy().into_owned();
        if p == "/" {
            continue;
        }
        let (kind, size, target) = match &node.inner {
            InnerNode::File(f) => ("file", Some(f.file_len() as u64), None),
            InnerNode::Dir(_) => ("dir", None, None),
            InnerNode::Symlink(s) => ("symlink", None, Some(s.link.to_string_lossy().into_owned())),
            InnerNode::CharacterDevice(_) => ("char-device", None, None),
            InnerNode::BlockDevice(_) => ("block-device", None, None),
            InnerNode::NamedPipe => ("fifo", None, None),
            InnerNode::Socket => ("socket", None, None),
        };
        if p == "/usr/lib/os-release" {
            contents.ships_os_release = true;
        }
        if let InnerNode::File(f) = &node.inner {
            if let Some(name) = p.strip_prefix(RELEASE_PREFIX) {
                let bytes = read_all(&fs, f).map_err(|e| inside(&p, e.to_string()))?;
                let text = String::from_utf8(bytes).map_err(|_| inside(&p, "not UTF-8".into()))?;
                let parsed = ExtensionRelease::parse(&text).map_err(|e| inside(&p, e.to_string()))?;
                contents.extension_release.insert(name.to_owned(), parsed);
            } else if let Some(name) = p.strip_prefix("/usr/share/sysext/").and_then(|r| r.strip_suffix("/inputs.json"))
            {
                let bytes = read_all(&fs, f).map_err(|e| inside(&p, e.to_string()))?;
                let value = serde_json::from_slice(&bytes).map_err(|e| inside(&p, e.to_string()))?;
                contents.inputs.insert(name.to_owned(), value);
            }
        }
        contents.entries.push(Entry {
            path: p,
            kind,
            mode: format!("{:04o}", node.header.permissions & 0o7777),
            uid: node.header.uid,
            gid: node.header.gid,
            mtime: node.header.mtime,
            size,
            target,
        });
    }
    contents.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(contents)
}

impl Contents {
    /// The identity of the image named `image` (its file name), refusing what systemd-sysext
    /// would refuse at boot: no `extension-release.<name>`, a shipped os-release, or an
    /// `ARCHITECTURE`, `SYSEXT_ID` or `SYSEXT_VERSION_ID` that contradicts the file name; and
    /// an inputs lock for another image.
    pub fn identity(&self, path: &Path, image: &ImageName) -> Result<Identity, ImageError> {
        if self.ships_os_release {
            return Err(ImageError::ShipsOsRelease { path: path.to_owned() });
        }
        let name = image.name.as_str();
        let Some(release) = self.extension_release.get(name) else {
            let found: Vec<String> = self.extension_release.keys().map(|k| format!("{RELEASE_PREFIX}{k}")).collect();
            return Err(ImageError::MissingRelease {
                path: path.to_owned(),
                expected: format!("{RELEASE_PREFIX}{name}"),
                found: if found.is_empty() { "none".into() } else { found.join(", ") },
            });
        };
        let mismatch = |field, named: String, inside: &str| ImageError::Mismatch {
            path: path.to_owned(),
            name: name.to_owned(),
            field,
            named,
            inside: inside.to_owned(),
        };
        if let Some(arch) = release.get("ARCHITECTURE").filter(|a| !a.is_empty() && *a != "_any") {
            if arch != image.arch.as_str() {
                return Err(mismatch("ARCHITECTURE", image.arch.to_string(), arch));
            }
        }
        // Optional identity fields, but when present they must agree: a file renamed to
        // another version would otherwise be installed (and published) under the wrong one.
        for (field, named) in [("SYSEXT_ID", name), ("SYSEXT_VERSION_ID", image.version.as_str())] {
            if let Some(inside) = release.get(field) {
                if inside != named {
                    return Err(mismatch(field, named.to_owned(), inside));
                }
            }
        }
        let inputs = match self.inputs.get(name) {
            None => None,
            Some(value) => {
                let lock: InputsLock = serde_json::from_value(value.clone()).map_err(|e| ImageError::Inside {
                    path: path.to_owned(),
                    inside: crate::inputs::lock_path(&image.name),
                    reason: e.to_string(),
                })?;
                if lock.extension != image.name || lock.version != image.version || lock.arch != image.arch {
                    return Err(ImageError::LockMismatch {
                        path: path.to_owned(),
                        extension: lock.extension.to_string(),
                        version: lock.version.to_string(),
                        arch: lock.arch.to_string(),
                    });
                }
                Some(lock)
            }
        };
        Ok(Identity { image: image.clone(), extension_release: release.clone(), inputs })
    }
}

/// Reads the identity of the image at `path`, whose file name is `<name>-<version>-<arch>.raw`.
pub fn identity(path: &Path, image: &ImageName) -> Result<Identity, ImageError> {
    read(path)?.identity(path, image)
}

/// A digest and contents, for `bakery inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Image file.
    pub path: PathBuf,
    /// Size of the image file in bytes.
    pub size: u64,
    /// sha256 of the image file.
    pub sha256: Sha256Digest,
    /// What it holds.
    #[serde(flatten)]
    pub contents: Contents,
}

/// Hashes and reads an image.
pub fn inspect(path: &Path) -> Result<Inspection, ImageError> {
    let io = |cause| ImageError::Io { path: path.to_owned(), cause };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let sha256 = Sha256Digest::of_reader(file).map_err(io)?;
    Ok(Inspection { path: path.to_owned(), size, sha256, contents: read(path)? })
}
