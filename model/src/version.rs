use std::fmt;
use std::str::FromStr;

use crate::name::starts_like_version;

/// The version of an extension image, in upstream's own tag form (`v1.31.3`, `2.0.4`).
///
/// It becomes the `@v` part that systemd-sysupdate matches, so it is held to sysupdate's
/// rules and to what keeps `NAME-VERSION-ARCH.raw` unambiguous: letters, digits, `.`, `_` and
/// `+`, starting with a digit or `v` and a digit, at most 64 characters. `-` is refused:
/// it is the file-name separator, and sysupdate would order `1.32.0-rc.1` above `1.32.0`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(String);

/// Why a string is not an image version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid version '{given}': {reason}")]
pub struct VersionParseError {
    given: String,
    reason: &'static str,
}

impl Version {
    /// The version exactly as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The version read as semver, ignoring a leading `v`; `None` if it is not semver.
    pub fn semver(&self) -> Option<semver::Version> {
        semver::Version::parse(self.0.strip_prefix('v').unwrap_or(&self.0)).ok()
    }
}

/// Ordered as systemd-sysupdate orders `@v` ([`crate::uapi_version::compare`]); versions
/// systemd considers equal (`1.01`, `1.1`) fall back to byte order, so `Ord` agrees with `Eq`.
impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        crate::uapi_version::compare(&self.0, &other.0).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Version {
    type Err = VersionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| Err(VersionParseError { given: s.to_owned(), reason });
        if s.is_empty() || s.len() > 64 {
            return err("expected 1 to 64 characters");
        }
        if s.contains('-') {
            return err("'-' is not allowed: it separates name, version and architecture in image names, and systemd-sysupdate orders pre-releases like 1.0.0-rc.1 above 1.0.0");
        }
        if !s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+')) {
            return err("expected only letters, digits, '.', '_' and '+' (systemd-sysupdate's version characters)");
        }
        if !starts_like_version(s) {
            return err("expected a digit, or 'v' and a digit, first");
        }
        Ok(Self(s.to_owned()))
    }
}

crate::serde_via_str!(Version);
crate::string_schema!(
    Version,
    "Version",
    "Image version as systemd-sysupdate sees @v: upstream tag form, never '-'.",
    "^v?[0-9][A-Za-z0-9._+]{0,63}$"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_upstream_tags() {
        for v in ["v1.31.3", "2.0.4", "v1.6.2", "v1.32.2+k3s1", "2024.10.1"] {
            assert_eq!(v.parse::<Version>().unwrap().to_string(), v);
        }
    }

    #[test]
    fn orders_like_sysupdate() {
        let mut v: Vec<Version> =
            ["v1.31.10", "v1.31.2", "v1.30.14", "v1.31.3"].iter().map(|s| s.parse().unwrap()).collect();
        v.sort();
        let sorted: Vec<&str> = v.iter().map(Version::as_str).collect();
        assert_eq!(sorted, ["v1.30.14", "v1.31.2", "v1.31.3", "v1.31.10"]);
    }

    #[test]
    fn semver_ignores_the_v() {
        let v: Version = "v1.31.3".parse().unwrap();
        assert_eq!(v.semver(), Some(semver::Version::new(1, 31, 3)));
    }

    #[test]
    fn rejects_what_sysupdate_or_file_names_cannot_carry() {
        let err = "v1.32.0-rc.1".parse::<Version>().unwrap_err().to_string();
        assert!(err.contains("'-' is not allowed"), "{err}");
        for v in ["", "latest", "1.0~rc1", "1.0^1", "../1", "1 2", "v", "vx1"] {
            assert!(v.parse::<Version>().is_err(), "{v} should be rejected");
        }
    }
}
