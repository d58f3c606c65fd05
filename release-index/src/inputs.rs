//! The inputs lock: which upstream files an image was built from.
//!
//! bakery writes it into every image as `/usr/share/sysext/<ext>/inputs.json`, and the release
//! index repeats the `inputs` list for every artifact, so that anyone can trace a published
//! image back to upstream URLs and digests without downloading it.

use signing::Sha256Digest;

use sysext_model::{Arch, ExtensionName, Version};

/// What an upstream URL was used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// A file that ends up in the image.
    Artifact,
    /// A published checksum an artifact was verified against.
    Checksum,
    /// A value substituted into other URLs.
    Variable,
}

/// One upstream input and the digest of what was used.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Input {
    /// Role.
    pub kind: InputKind,
    /// Recipe name of the artifact or variable.
    pub name: String,
    /// Canonical upstream URL (never a mirror's, so the lock is the same from any mirror).
    pub url: String,
    /// sha256 of the bytes used.
    pub sha256: Sha256Digest,
    /// For artifacts: the checksum URL (or "pinned in recipe") that vouched for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    /// For variables: the value read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `/usr/share/sysext/<ext>/inputs.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct InputsLock {
    /// Extension name.
    pub extension: ExtensionName,
    /// Version built.
    pub version: Version,
    /// Architecture built.
    pub arch: Arch,
    /// Every upstream URL used, in recipe order.
    pub inputs: Vec<Input>,
}

/// Where bakery stores the lock inside an image.
pub fn lock_path(name: &ExtensionName) -> String {
    format!("/usr/share/sysext/{name}/inputs.json")
}
