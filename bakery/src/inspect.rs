//! Reading an image back: extension-release, inputs lock, file list and digest.
//!
//! This uses an independent squashfs reader (backhand), not our writer's own structures, so
//! `bakery create` can verify each image by reading it the way a consumer would before it is
//! renamed into place.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backhand::{FilesystemReader, InnerNode};
use release_index::extension_release::ExtensionRelease;
use serde::Serialize;
use signing::Sha256Digest;

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

/// What `bakery inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Image file.
    pub path: PathBuf,
    /// Size of the image file in bytes.
    pub size: u64,
    /// sha256 of the image file.
    pub sha256: Sha256Digest,
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
    /// Every entry, sorted by path.
    pub entries: Vec<Entry>,
}

fn read_all(fs: &FilesystemReader<'_>, file: &backhand::SquashfsFileReader, path: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs.file(file).reader().read_to_end(&mut buf).with_context(|| format!("reading {path} inside the image"))?;
    Ok(buf)
}

/// Reads an image.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let sha256 =
        Sha256Digest::of_reader(fs_err::File::open(path)?).with_context(|| format!("hashing {}", path.display()))?;
    let size = fs_err::metadata(path)?.len();
    let file = fs_err::File::open(path)?;
    let fs = FilesystemReader::from_reader(BufReader::new(file.into_parts().0))
        .map_err(|e| anyhow::anyhow!("{}: not a readable squashfs image: {e}", path.display()))?;
    let mut entries = Vec::new();
    let mut extension_release = BTreeMap::new();
    let mut inputs = BTreeMap::new();
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
        if let InnerNode::File(f) = &node.inner {
            if let Some(name) = p.strip_prefix("/usr/lib/extension-release.d/extension-release.") {
                let text = String::from_utf8(read_all(&fs, f, &p)?).with_context(|| format!("{p} is not UTF-8"))?;
                let parsed = ExtensionRelease::parse(&text).with_context(|| format!("parsing {p}"))?;
                extension_release.insert(name.to_owned(), parsed);
            } else if let Some(rest) = p.strip_prefix("/usr/share/sysext/") {
                if let Some(name) = rest.strip_suffix("/inputs.json") {
                    let value =
                        serde_json::from_slice(&read_all(&fs, f, &p)?).with_context(|| format!("parsing {p}"))?;
                    inputs.insert(name.to_owned(), value);
                }
            }
        }
        entries.push(Entry {
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
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let compression = fs.compressor.map_or_else(|| "none".to_owned(), |c| format!("{c:?}").to_lowercase());
    Ok(Inspection {
        path: path.to_owned(),
        size,
        sha256,
        compression,
        block_size: fs.block_size,
        mtime: fs.mod_time,
        extension_release,
        inputs,
        entries,
    })
}

impl Inspection {
    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut out = format!(
            "image:       {}\nsha256:      {}\nsize:        {} bytes\ncompression: {}, {} KiB blocks\n",
            self.path.display(),
            self.sha256,
            self.size,
            self.compression,
            self.block_size / 1024
        );
        for (name, release) in &self.extension_release {
            out.push_str(&format!("\nextension-release.{name}:\n"));
            for line in release.render().lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        for (name, lock) in &self.inputs {
            out.push_str(&format!("\ninputs ({name}):\n"));
            for input in lock.get("inputs").and_then(|v| v.as_array()).into_iter().flatten() {
                let field = |k: &str| input.get(k).and_then(|v| v.as_str()).unwrap_or("");
                out.push_str(&format!("  {:<9} {}  {}\n", field("kind"), field("sha256"), field("url")));
            }
        }
        out.push_str("\nfiles:\n");
        for e in &self.entries {
            let size = e.size.map_or_else(String::new, |s| s.to_string());
            let target = e.target.as_ref().map_or_else(String::new, |t| format!(" -> {t}"));
            out.push_str(&format!(
                "  {:<7} {} {}:{} {:>10}  {}{}\n",
                e.kind, e.mode, e.uid, e.gid, size, e.path, target
            ));
        }
        out
    }
}
