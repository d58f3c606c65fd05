//! `index.json`: the signed description of everything in a release directory.
//!
//! Nodes trust a release through this one file and its detached signature: it names every
//! artifact with its size, SHA-256 and SHA-512, carries a serial that only ever grows (so a
//! replayed older index is detected) and an expiry (so a frozen mirror is detected).

use std::collections::BTreeMap;

use signing::openpgp::Fingerprint;
use signing::{KeyId, Sha256Digest, Sha512Digest};

use sysext_model::{Arch, BaseUrl, Channel, ExtensionName, ExtensionRelease, ImageName, Version};

use crate::inputs::Input;
use crate::rotation::KeyRotation;
use crate::timestamp::Timestamp;

/// The index format this code writes and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest `index.json` a client reads; far above any real release, small enough that a
/// hostile server cannot make a node buffer gigabytes.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;

/// The signed index of a release directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(title = "bakery release index", description = "index.json of a release directory, signed by index.json.sig")]
pub struct Index {
    /// Format version; clients refuse versions they do not know.
    pub schema_version: u32,
    /// Grows by one with every publish; clients refuse an index older than one they accepted.
    pub serial: u64,
    /// When this index was written.
    pub generated_at: Timestamp,
    /// After this instant clients refuse the index: republish to extend it.
    pub expires: Timestamp,
    /// The key that signed `index.json.sig`.
    pub key_id: KeyId,
    /// How the release came to be signed by `key-id`: the planned key rotations, oldest
    /// first, each signed by the key it retires (see `rotation`). Absent when the release
    /// never changed keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_rotations: Vec<KeyRotation>,
    /// The OpenPGP key (derived from `key-id`'s key) that signs every `SHA256SUMS` as
    /// `SHA256SUMS.gpg` for stock systemd-sysupdate, exported as `import-pubring.gpg`. Absent
    /// when the release has no OpenPGP signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openpgp_fingerprint: Option<Fingerprint>,
    /// Where the release directory is served; the transfer files point into it.
    pub base_url: BaseUrl,
    /// Artifacts by extension, version (in systemd-sysupdate's order) and architecture.
    pub extensions: BTreeMap<ExtensionName, BTreeMap<Version, BTreeMap<Arch, Artifact>>>,
    /// SHA-256 of every sysupdate transfer file, by path relative to the release directory.
    pub transfer_files: BTreeMap<String, Sha256Digest>,
}

/// One published image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Artifact {
    /// File name at the top of the release directory (and under `<extension>/`).
    pub file: ImageName,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file, as listed in SHA256SUMS.
    pub sha256: Sha256Digest,
    /// SHA-512 of the file (Ignition's `verification.hash`).
    pub sha512: Sha512Digest,
    /// The image's `extension-release.<extension>` fields.
    pub extension_release: ExtensionRelease,
    /// Upstream files the image was built from (from its inputs lock).
    pub inputs: Vec<Input>,
}

/// Why an index is refused.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Not JSON of the expected shape.
    #[error("index.json is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer (or older) bakery.
    #[error("index.json has schema-version {found}; this build reads only version {SCHEMA_VERSION}")]
    UnsupportedSchema {
        /// What the file says.
        found: u32,
    },
    /// Well-formed JSON that contradicts itself.
    #[error("index.json is inconsistent: {0}")]
    Inconsistent(String),
    /// A key rotation record that is not signed by the key it retires, or a broken chain.
    #[error("index.json has an invalid key rotation chain: {0}")]
    Rotation(String),
}

impl Index {
    /// Parses and checks an index. Signature, expiry and serial are the caller's business
    /// ([`crate::client`]); this checks that the document is internally consistent.
    pub fn parse(bytes: &[u8]) -> Result<Self, IndexError> {
        // Check the version before the full shape, so a future format gets the right error.
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "schema-version")]
            schema_version: u32,
        }
        if let Ok(head) = serde_json::from_slice::<Head>(bytes) {
            if head.schema_version != SCHEMA_VERSION {
                return Err(IndexError::UnsupportedSchema { found: head.schema_version });
            }
        }
        let index: Index = serde_json::from_slice(bytes)?;
        index.check()?;
        Ok(index)
    }

    /// The exact bytes written to `index.json`.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("the index serialises");
        s.push('\n');
        s
    }

    /// Every artifact with its coordinates, in (extension, version, arch) order.
    pub fn artifacts(&self) -> impl Iterator<Item = (&ExtensionName, &Version, Arch, &Artifact)> {
        self.extensions.iter().flat_map(|(name, versions)| {
            versions
                .iter()
                .flat_map(move |(version, arches)| arches.iter().map(move |(a, art)| (name, version, *a, art)))
        })
    }

    /// The artifact published under `file`.
    pub fn artifact(&self, file: &ImageName) -> Option<&Artifact> {
        self.extensions.get(&file.name)?.get(&file.version)?.get(&file.arch)
    }

    /// The newest version of `name` for `arch` that `channel` admits.
    pub fn resolve(&self, name: &ExtensionName, channel: &Channel, arch: Arch) -> Option<(&Version, &Artifact)> {
        let versions = self.extensions.get(name)?;
        let newest = channel.newest(versions.iter().filter(|(_, a)| a.contains_key(&arch)).map(|(v, _)| v))?;
        Some((newest, &versions[newest][&arch]))
    }

    fn check(&self) -> Result<(), IndexError> {
        let bad = |m: String| Err(IndexError::Inconsistent(m));
        if self.serial == 0 {
            return bad("serial must be at least 1".into());
        }
        if self.expires <= self.generated_at {
            return bad(format!("expires ({}) is not after generated-at ({})", self.expires, self.generated_at));
        }
        for (name, version, arch, art) in self.artifacts() {
            let want = ImageName::new(name.clone(), version.clone(), arch);
            if art.file != want {
                return bad(format!("{name} {version} {arch} is filed as '{}', expected '{want}'", art.file));
            }
            if art.extension_release.get("ARCHITECTURE") != Some(arch.as_str()) {
                return bad(format!("'{want}': its extension-release does not say ARCHITECTURE={arch}"));
            }
        }
        for path in self.transfer_files.keys() {
            valid_relative_path(path).or_else(|e| bad(format!("transfer file '{path}': {e}")))?;
        }
        crate::rotation::check_chain(&self.key_rotations, self.key_id).map_err(IndexError::Rotation)?;
        Ok(())
    }
}

/// A path inside a release directory: `name` or `dir/name`, nothing that could escape it.
pub fn valid_relative_path(path: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 2 {
        return Err("expected NAME or DIR/NAME");
    }
    parts.iter().try_for_each(|p| crate::sha256sums::valid_name(p))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn artifact(name: &str, version: &str, arch: Arch) -> Artifact {
        let name: ExtensionName = name.parse().unwrap();
        let mut extension_release = ExtensionRelease::default();
        extension_release.set("ID", "_any");
        extension_release.set("ARCHITECTURE", arch.as_str());
        Artifact {
            file: ImageName::new(name, v(version), arch),
            size: 1,
            sha256: Sha256Digest::of(version.as_bytes()),
            sha512: Sha512Digest::of(version.as_bytes()),
            extension_release,
            inputs: Vec::new(),
        }
    }

    pub(crate) fn sample(versions: &[&str]) -> Index {
        let mut kube = BTreeMap::new();
        for ver in versions {
            let mut arches = BTreeMap::new();
            arches.insert(Arch::X86_64, artifact("kubernetes", ver, Arch::X86_64));
            kube.insert(v(ver), arches);
        }
        Index {
            schema_version: SCHEMA_VERSION,
            serial: 7,
            generated_at: "2026-11-22T10:00:00Z".parse().unwrap(),
            expires: "2026-12-22T10:00:00Z".parse().unwrap(),
            key_id: "0123456789abcdef".parse().unwrap(),
            key_rotations: Vec::new(),
            openpgp_fingerprint: None,
            base_url: "https://example.org/ext".parse().unwrap(),
            extensions: [("kubernetes".parse().unwrap(), kube)].into_iter().collect(),
            transfer_files: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trips_and_orders_versions_like_systemd() {
        let index = sample(&["v1.30.10", "v1.30.2", "v1.31.0"]);
        let json = index.to_json();
        let p2 = json.find("v1.30.2").unwrap();
        let p10 = json.find("v1.30.10").unwrap();
        assert!(p2 < p10, "1.30.2 sorts before 1.30.10:\n{json}");
        assert_eq!(Index::parse(json.as_bytes()).unwrap(), index);
        assert!(json.contains("\"base-url\": \"https://example.org/ext/\""));
    }

    #[test]
    fn refuses_unknown_schema_fields_and_inconsistency() {
        let index = sample(&["v1.31.3"]);
        let json = index.to_json();
        let future = json.replace("\"schema-version\": 1", "\"schema-version\": 2");
        assert!(matches!(Index::parse(future.as_bytes()), Err(IndexError::UnsupportedSchema { found: 2 })));
        let extra = json.replacen('{', "{\"surprise\": 1,", 1);
        assert!(Index::parse(extra.as_bytes()).unwrap_err().to_string().contains("unknown field"));
        let misfiled =
            json.replace("\"file\": \"kubernetes-v1.31.3-x86-64.raw\"", "\"file\": \"kubernetes-v1.31.4-x86-64.raw\"");
        assert!(Index::parse(misfiled.as_bytes()).unwrap_err().to_string().contains("is filed as"));
        let mut stale = index.clone();
        stale.expires = stale.generated_at;
        assert!(Index::parse(stale.to_json().as_bytes()).unwrap_err().to_string().contains("not after"));
        let mut escape = index;
        escape.transfer_files.insert("../x.conf".into(), Sha256Digest::of(b""));
        assert!(Index::parse(escape.to_json().as_bytes()).is_err());
    }

    #[test]
    fn channels_resolve_with_semver() {
        // The channel rules themselves are tested in sysext_model::channel; here, that resolve
        // applies them to the index's versions of one extension and architecture.
        let index = sample(&["v1.30.2", "v1.30.10", "v1.31.0", "v1.31.3", "v1.32.1"]);
        let k: ExtensionName = "kubernetes".parse().unwrap();
        let pick = |c: &str| index.resolve(&k, &c.parse().unwrap(), Arch::X86_64).map(|(v, _)| v.to_string());
        assert_eq!(pick("1.30").as_deref(), Some("v1.30.10"), "semver order, not string order");
        assert_eq!(pick("latest").as_deref(), Some("v1.32.1"));
        assert_eq!(pick("1.33"), None);
        assert_eq!(index.resolve(&k, &"1.31".parse().unwrap(), Arch::Arm64), None);
        assert_eq!(index.resolve(&"cni".parse().unwrap(), &"latest".parse().unwrap(), Arch::X86_64), None);
    }
}
