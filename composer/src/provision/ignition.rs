//! Ignition config spec 3.3.0: the typed subset composer writes, and rendering a node plan
//! into it.
//!
//! 3.3.0 because it is what every Flatcar with spec 3 support (≥ 3185.0.0) and Debian 12's
//! `ignition-validate` 2.14 accept; 3.4.0 is refused there. The fields used mean the same in
//! every 3.x, so a `--base` config of a newer 3.x keeps its own version.
//!
//! Image files carry `verification.hash` (SHA-512 from the signed index: Ignition checks it
//! over the downloaded bytes and fails provisioning on a mismatch). Small files (transfer
//! files) are inline `data:` URLs rather than links to the release's own copies: their text
//! comes from the node plan, so it follows `--base-url` (the published copies point at the
//! index's `base-url`), is byte-identical to what `compose` writes, and costs no extra
//! download at boot.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::plan::{Entry, ImageSource, NodePlan};

/// The spec version composer writes.
pub const SPEC_VERSION: &str = "3.3.0";

/// A whole config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// `ignition.version`.
    pub ignition: Ignition,
    /// Files, directories and links.
    #[serde(default, skip_serializing_if = "Storage::is_empty")]
    pub storage: Storage,
    /// Units.
    #[serde(default, skip_serializing_if = "Systemd::is_empty")]
    pub systemd: Systemd,
}

/// The `ignition` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignition {
    /// Spec version, e.g. `3.3.0`.
    pub version: String,
}

/// The `storage` section (shared with Butane, whose keys are the same for what composer
/// writes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// Directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<Directory>,
    /// Regular files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    /// Links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

impl Storage {
    fn is_empty(&self) -> bool {
        self.directories.is_empty() && self.files.is_empty() && self.links.is_empty()
    }
}

/// `storage.directories[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Absolute path.
    pub path: String,
    /// Permission bits (JSON has no octal: 0755 is 493).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// `storage.files[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    /// Absolute path.
    pub path: String,
    /// Permission bits (0644 is 420).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Replace whatever is at the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    /// What goes into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<Resource>,
}

/// `contents` of a file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// URL (`https://…`, `data:,…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Butane only: the contents as text (Butane turns it into a `data:` URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Digest the fetched bytes must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// `verification` of a resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// `sha512-<hex>` or `sha256-<hex>`.
    pub hash: String,
}

/// `storage.links[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Absolute path of the link.
    pub path: String,
    /// Where it points.
    pub target: String,
    /// `false`: a symbolic link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard: Option<bool>,
    /// Replace whatever is at the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
}

/// The `systemd` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Systemd {
    /// Units.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
}

impl Systemd {
    fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

/// `systemd.units[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Unit name.
    pub name: String,
    /// Enable it (through its `[Install]` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// How small files are written: Ignition needs a URL, Butane reads text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SmallFiles {
    /// `contents.source: data:,…`.
    DataUrl,
    /// `contents.inline: …`.
    Inline,
}

/// The storage and units for `plan`: directories 0755, images 0644 from their URL with
/// the SHA-512 the signed index gives, small files inline, symbolic links (those the OS may
/// have created replaced), and the plan's units enabled.
pub(crate) fn storage_and_units(plan: &NodePlan, small: SmallFiles) -> Result<(Storage, Systemd)> {
    let mut storage = Storage::default();
    for entry in &plan.entries {
        match entry {
            Entry::Dir { path } => storage.directories.push(Directory { path: path.clone(), mode: Some(0o755) }),
            Entry::Image { path, image } => {
                let ImageSource::Url(url) = &image.source else {
                    bail!(
                        "{path}: a provisioning config names where nodes download an image; this one is a local file"
                    );
                };
                storage.files.push(File {
                    path: path.clone(),
                    mode: Some(0o644),
                    overwrite: None,
                    contents: Some(Resource {
                        source: Some(url.clone()),
                        inline: None,
                        verification: Some(Verification { hash: format!("sha512-{}", image.sha512.to_hex()) }),
                    }),
                });
            }
            Entry::File { path, mode, contents } => {
                // Butane's inline text cannot hold binary files (an OpenPGP keyring): those stay
                // data URLs there too.
                let text = std::str::from_utf8(contents).ok();
                let resource = match (small, text) {
                    (SmallFiles::Inline, Some(text)) => {
                        Resource { inline: Some(text.to_owned()), ..Resource::default() }
                    }
                    _ => Resource { source: Some(data_url(contents)), ..Resource::default() },
                };
                storage.files.push(File {
                    path: path.clone(),
                    mode: Some(*mode),
                    overwrite: None,
                    contents: Some(resource),
                });
            }
            Entry::Link { path, target, replace } => storage.links.push(Link {
                path: path.clone(),
                target: target.clone(),
                hard: Some(false),
                overwrite: replace.then_some(true),
            }),
        }
    }
    let units = plan.enable.iter().map(|u| Unit { name: u.name.clone(), enabled: Some(true) }).collect();
    Ok((storage, Systemd { units }))
}

/// The Ignition config for `plan`.
pub fn config(plan: &NodePlan) -> Result<Config> {
    let (storage, systemd) = storage_and_units(plan, SmallFiles::DataUrl)?;
    Ok(Config { ignition: Ignition { version: SPEC_VERSION.to_owned() }, storage, systemd })
}

/// An RFC 2397 `data:` URL with everything but unreserved characters and `/:=,@`
/// percent-encoded (`+` too: some decoders read it as a space).
pub fn data_url(bytes: &[u8]) -> String {
    let mut s = String::from("data:,");
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/:=,@".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// Decodes what [`data_url`] writes (any `data:,` URL with percent escapes).
pub fn decode_data_url(url: &str) -> Option<Vec<u8>> {
    let data = url.strip_prefix("data:,")?.as_bytes();
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'%' {
            let hex = std::str::from_utf8(data.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_round_trip() {
        let text = "[Transfer]\nVerify=false\nPath=https://x.org/a b/+%?#\n";
        let url = data_url(text.as_bytes());
        assert!(url.starts_with("data:,%5BTransfer%5D%0AVerify=false%0A"), "{url}");
        assert!(!url.contains('+') && !url.contains(' ') && !url.contains('#'), "{url}");
        assert_eq!(decode_data_url(&url).unwrap(), text.as_bytes());
        assert!(decode_data_url("data:,%G1").is_none());
    }
}
