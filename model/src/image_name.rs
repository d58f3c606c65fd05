use std::fmt;
use std::str::FromStr;

use crate::name::starts_like_version;
use crate::{Arch, ExtensionName, Version};

/// The published file name of an image: `<name>-<version>-<arch>.raw`.
///
/// This is the layout Flatcar's sysext-bakery and sysupdate patterns (`<name>-@v-%a.raw`)
/// expect, e.g. `kubernetes-v1.31.3-x86-64.raw`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName {
    /// Extension name.
    pub name: ExtensionName,
    /// Upstream version.
    pub version: Version,
    /// Target architecture.
    pub arch: Arch,
}

/// Why a file name is not an image name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{given}' is not an image file name of the form <name>-<version>-<arch>.raw: {reason}")]
pub struct ImageNameParseError {
    given: String,
    reason: String,
}

impl ImageName {
    /// Builds the name of an image.
    pub fn new(name: ExtensionName, version: Version, arch: Arch) -> Self {
        Self { name, version, arch }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}.raw", self.name, self.version, self.arch)
    }
}

impl FromStr for ImageName {
    type Err = ImageNameParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ImageNameParseError { given: s.to_owned(), reason };
        let stem = s.strip_suffix(".raw").ok_or_else(|| err("missing .raw suffix".into()))?;
        let (rest, arch) = Arch::ALL
            .iter()
            .find_map(|a| stem.strip_suffix(a.as_str())?.strip_suffix('-').map(|r| (r, *a)))
            .ok_or_else(|| err("expected it to end in -x86-64.raw or -arm64.raw".into()))?;
        // Names never contain a part that starts like a version, so the first such part
        // begins the version.
        let split = rest
            .match_indices('-')
            .map(|(i, _)| i)
            .find(|&i| starts_like_version(&rest[i + 1..]))
            .ok_or_else(|| err("no version after the name".into()))?;
        let name = rest[..split].parse().map_err(|e: crate::NameParseError| err(e.to_string()))?;
        let version = rest[split + 1..].parse().map_err(|e: crate::VersionParseError| err(e.to_string()))?;
        Ok(Self { name, version, arch })
    }
}

crate::serde_via_str!(ImageName);
crate::string_schema!(
    ImageName,
    "ImageName",
    "Image file name: NAME-VERSION-ARCH.raw.",
    "^[a-z][a-z0-9_-]*-v?[0-9][A-Za-z0-9._+]*-(x86-64|arm64)[.]raw$"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "kubernetes-v1.31.3-x86-64.raw",
            "containerd-2.0.4-arm64.raw",
            "cni-v1.6.2-x86-64.raw",
            "docker-compose-2.30.1-arm64.raw",
            "k3s-v1.32.2+k3s1-x86-64.raw",
        ] {
            let n: ImageName = s.parse().unwrap();
            assert_eq!(n.to_string(), s);
        }
        let n: ImageName = "docker-compose-2.30.1-arm64.raw".parse().unwrap();
        assert_eq!(n.name.as_str(), "docker-compose");
        assert_eq!(n.version.as_str(), "2.30.1");
        assert_eq!(n.arch, Arch::Arm64);
    }

    #[test]
    fn rejects_malformed() {
        for s in ["kubernetes.raw", "kubernetes-v1.31.3-amd64.raw", "kubernetes-v1.31.3-x86-64.img", "-1.0-arm64.raw"] {
            assert!(s.parse::<ImageName>().is_err(), "{s} should be rejected");
        }
    }
}
