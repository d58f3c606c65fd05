//! Which versions a consumer follows (`1.31`, `~1.31`, `>=1.30, <1.32`, `v1.31.3`, `latest`),
//! and `NAME@CHANNEL` references to an extension's channel.

use std::fmt;
use std::str::FromStr;

use crate::{ExtensionName, NameParseError, Version};

/// Which versions a consumer follows: `1.31` (patches of one minor), `~1.31`, `>=1.30, <1.32`,
/// an exact `v1.31.3`, or `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    spelling: String,
    req: Option<semver::VersionReq>,
}

/// Why a channel request is not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid channel '{given}': {reason}; expected e.g. 1.31, ~1.31, '>=1.30, <1.32', v1.31.3 or latest")]
pub struct ChannelParseError {
    given: String,
    reason: String,
}

impl Channel {
    /// Whether `version` is on this channel. Versions that are not semver never are; `latest`
    /// admits every release but no pre-release.
    pub fn admits(&self, version: &Version) -> bool {
        version.semver().is_some_and(|sv| self.admits_semver(&sv))
    }

    /// Whether a version read as semver is on this channel.
    pub fn admits_semver(&self, semver: &semver::Version) -> bool {
        match &self.req {
            None => semver.pre.is_empty(),
            Some(req) => req.matches(semver),
        }
    }

    /// The newest of `versions` this channel admits, by semver (which agrees with systemd's
    /// order on the releases channels select: pre-releases only when the channel names one).
    pub fn newest<'a>(&self, versions: impl IntoIterator<Item = &'a Version>) -> Option<&'a Version> {
        versions
            .into_iter()
            .filter_map(|v| Some((v, v.semver()?)))
            .filter(|(_, sv)| self.admits_semver(sv))
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(v, _)| v)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spelling)
    }
}

impl FromStr for Channel {
    type Err = ChannelParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ChannelParseError { given: s.to_owned(), reason };
        let t = s.trim();
        if t == "latest" {
            return Ok(Self { spelling: s.to_owned(), req: None });
        }
        let bare = t.strip_prefix('v').unwrap_or(t);
        let numeric_parts = bare.split('.').collect::<Vec<_>>();
        let all_numeric = numeric_parts.iter().all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
        // semver reads a bare `1.31` as `^1.31` (any 1.x from 1.31 on); for Kubernetes, where
        // minors are not interchangeable, a bare minor means its patch releases only.
        let req = match numeric_parts.len() {
            1 | 2 if all_numeric => format!("~{bare}"),
            3 if all_numeric => format!("={bare}"),
            _ => strip_v_in_req(t),
        };
        let req = semver::VersionReq::parse(&req).map_err(|e| err(e.to_string()))?;
        Ok(Self { spelling: s.to_owned(), req: Some(req) })
    }
}

crate::serde_via_str!(Channel);
crate::string_schema!(
    Channel,
    "Channel",
    "Versions followed: 1.31 (its patch releases), ~1.31, '>=1.30, <1.32', v1.31.3 or latest.",
    "^.+$"
);

/// `>=v1.30` → `>=1.30`: Kubernetes users write versions with their `v`.
fn strip_v_in_req(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        let next_is_digit = s[i + 1..].starts_with(|n: char| n.is_ascii_digit());
        if c == 'v' && next_is_digit && !prev.is_ascii_alphanumeric() {
            prev = c;
            continue;
        }
        out.push(c);
        prev = c;
    }
    out
}

/// A channel of one extension: `NAME@CHANNEL`, e.g. `kubernetes@1.31` (the newest `v1.31.x`)
/// or `containerd@2.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRef {
    /// Extension name.
    pub name: ExtensionName,
    /// Which versions.
    pub channel: Channel,
}

/// Why a string is not `NAME@CHANNEL`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelRefParseError {
    /// No `@`.
    #[error("'{0}' is not NAME@CHANNEL (e.g. kubernetes@1.31)")]
    NoAt(String),
    /// The name part.
    #[error(transparent)]
    Name(#[from] NameParseError),
    /// The channel part.
    #[error(transparent)]
    Channel(#[from] ChannelParseError),
}

impl fmt::Display for ChannelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.channel)
    }
}

impl FromStr for ChannelRef {
    type Err = ChannelRefParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, channel) = s.split_once('@').ok_or_else(|| ChannelRefParseError::NoAt(s.to_owned()))?;
        Ok(Self { name: name.parse()?, channel: channel.parse()? })
    }
}

crate::serde_via_str!(ChannelRef);
crate::string_schema!(ChannelRef, "ChannelRef", "NAME@CHANNEL, e.g. kubernetes@1.31.", "^[a-z][a-z0-9_-]*@.+$");

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(list: &[&str]) -> Vec<Version> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn channels_pick_the_newest_admitted_version() {
        let all = versions(&["v1.30.2", "v1.30.10", "v1.31.0", "v1.31.3", "v1.32.1", "v1.33.0+rc.1"]);
        let pick = |c: &str| c.parse::<Channel>().unwrap().newest(&all).map(ToString::to_string);
        assert_eq!(pick("1.30").as_deref(), Some("v1.30.10"));
        assert_eq!(pick("v1.31").as_deref(), Some("v1.31.3"));
        assert_eq!(pick("~1.31").as_deref(), Some("v1.31.3"));
        assert_eq!(pick(">=1.30, <1.32").as_deref(), Some("v1.31.3"));
        assert_eq!(pick(">=v1.30, <v1.32").as_deref(), Some("v1.31.3"));
        assert_eq!(pick("v1.30.2").as_deref(), Some("v1.30.2"));
        assert_eq!(pick("latest").as_deref(), Some("v1.33.0+rc.1"), "build metadata is not a pre-release");
        assert_eq!(pick("1.34"), None);
        assert!("1.31 garbage".parse::<Channel>().is_err());
        assert!(!"1.31".parse::<Channel>().unwrap().admits(&"2024".parse().unwrap()));
    }

    #[test]
    fn channel_refs_round_trip() {
        let c: ChannelRef = "kubernetes@1.31".parse().unwrap();
        assert_eq!(c.name.as_str(), "kubernetes");
        assert_eq!(c.to_string(), "kubernetes@1.31");
        assert_eq!("cni@>=1.30, <1.32".parse::<ChannelRef>().unwrap().to_string(), "cni@>=1.30, <1.32");
        for bad in ["kubernetes", "kubernetes@", "Kube@1.31", "kubernetes@1 31", "@1.31"] {
            assert!(bad.parse::<ChannelRef>().is_err(), "{bad}");
        }
    }
}
