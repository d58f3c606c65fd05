//! `extension-release.NAME` files: parsing, rendering and the `--os` target they encode.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::{Arch, ExtensionName, Version};

/// Which host OS an image declares itself compatible with.
///
/// systemd-sysext compares these fields with the host's os-release at merge time and skips an
/// image that does not match *silently* (spec-digest §1.5), so the choice is explicit:
/// - `_any`: `ID=_any`, merges on any OS with systemd ≥ 252 (the default);
/// - `flatcar`: `ID=flatcar` + `SYSEXT_LEVEL=1.0`, Flatcar's stable extension API level;
/// - `ID:VERSION_ID` (e.g. `ubuntu:24.04`): pinned to one OS release;
/// - `ID@SYSEXT_LEVEL`: an OS that declares an extension API level.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum OsTarget {
    /// `ID=_any`.
    #[default]
    Any,
    /// `ID=<id>` and `VERSION_ID=<version_id>`.
    VersionId {
        /// os-release `ID`.
        id: String,
        /// os-release `VERSION_ID`.
        version_id: String,
    },
    /// `ID=<id>` and `SYSEXT_LEVEL=<level>`.
    SysextLevel {
        /// os-release `ID`.
        id: String,
        /// os-release `SYSEXT_LEVEL`.
        level: String,
    },
}

/// Why an `--os` value is not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid OS target '{given}': {reason}; expected _any, flatcar, ID:VERSION_ID (e.g. ubuntu:24.04) or ID@SYSEXT_LEVEL (e.g. flatcar@1.0)")]
pub struct OsTargetParseError {
    given: String,
    reason: String,
}

// os-release(5): ID and VERSION_ID use lowercase letters, digits, '.', '_' and '-';
// SYSEXT_LEVEL the same set. Anything else would never compare equal at boot.
fn os_token_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

impl FromStr for OsTarget {
    type Err = OsTargetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| OsTargetParseError { given: s.to_owned(), reason: reason.to_owned() };
        let check = |field: &str, v: &str| {
            if os_token_ok(v) {
                Ok(v.to_owned())
            } else {
                Err(err(&format!("{field} '{v}' may only contain lowercase letters, digits, '.', '_' and '-'")))
            }
        };
        match s {
            "_any" => Ok(OsTarget::Any),
            "flatcar" => Ok(OsTarget::SysextLevel { id: "flatcar".into(), level: "1.0".into() }),
            _ => {
                if let Some((id, v)) = s.split_once(':') {
                    Ok(OsTarget::VersionId { id: check("ID", id)?, version_id: check("VERSION_ID", v)? })
                } else if let Some((id, l)) = s.split_once('@') {
                    Ok(OsTarget::SysextLevel { id: check("ID", id)?, level: check("SYSEXT_LEVEL", l)? })
                } else if os_token_ok(s) {
                    Err(err("an OS ID alone never matches a host that has VERSION_ID or SYSEXT_LEVEL; add :VERSION_ID or @SYSEXT_LEVEL"))
                } else {
                    Err(err("not a known form"))
                }
            }
        }
    }
}

impl fmt::Display for OsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OsTarget::Any => f.write_str("_any"),
            OsTarget::VersionId { id, version_id } => write!(f, "{id}:{version_id}"),
            OsTarget::SysextLevel { id, level } => write!(f, "{id}@{level}"),
        }
    }
}

/// The contents of an extension-release file: ordered `KEY=value` fields.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct ExtensionRelease {
    fields: BTreeMap<String, String>,
}

/// A line of an extension-release file that systemd could not read either.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("extension-release line {line}: {reason}")]
pub struct ReleaseParseError {
    line: usize,
    reason: &'static str,
}

impl ExtensionRelease {
    /// The fields bakery writes into an image.
    pub fn for_image(name: &ExtensionName, version: &Version, arch: Arch, os: &OsTarget, reload_manager: bool) -> Self {
        let mut r = Self::default();
        match os {
            OsTarget::Any => r.set("ID", "_any"),
            OsTarget::VersionId { id, version_id } => {
                r.set("ID", id);
                r.set("VERSION_ID", version_id);
            }
            OsTarget::SysextLevel { id, level } => {
                r.set("ID", id);
                r.set("SYSEXT_LEVEL", level);
            }
        }
        r.set("ARCHITECTURE", arch.as_str());
        r.set("SYSEXT_ID", name.as_str());
        r.set("SYSEXT_VERSION_ID", version.as_str());
        if reload_manager {
            r.set("EXTENSION_RELOAD_MANAGER", "1");
        }
        r
    }

    /// Sets a field.
    pub fn set(&mut self, key: &str, value: &str) {
        self.fields.insert(key.to_owned(), value.to_owned());
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// All fields, sorted by key.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        &self.fields
    }

    /// Renders the file. Identity fields come first in a fixed order so the file reads the way
    /// Flatcar's does; values are written unquoted when they need no quoting.
    pub fn render(&self) -> String {
        const ORDER: [&str; 7] = [
            "ID",
            "VERSION_ID",
            "SYSEXT_LEVEL",
            "ARCHITECTURE",
            "SYSEXT_ID",
            "SYSEXT_VERSION_ID",
            "EXTENSION_RELOAD_MANAGER",
        ];
        let mut out = String::new();
        let mut emit = |k: &str, v: &str| {
            let plain = !v.is_empty()
                && v.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+' | b'/' | b':' | b','));
            if plain {
                out.push_str(&format!("{k}={v}\n"));
            } else {
                let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$").replace('`', "\\`");
                out.push_str(&format!("{k}=\"{escaped}\"\n"));
            }
        };
        for k in ORDER {
            if let Some(v) = self.fields.get(k) {
                emit(k, v);
            }
        }
        for (k, v) in &self.fields {
            if !ORDER.contains(&k.as_str()) {
                emit(k, v);
            }
        }
        out
    }

    /// Parses os-release syntax: `KEY=value`, values optionally in single or double quotes,
    /// `#` comments and blank lines ignored.
    pub fn parse(text: &str) -> Result<Self, ReleaseParseError> {
        let mut r = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason| ReleaseParseError { line: i + 1, reason };
            let (key, value) = line.split_once('=').ok_or_else(|| err("expected KEY=value"))?;
            if key.is_empty() || !key.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_') {
                return Err(err("keys are uppercase letters, digits and '_'"));
            }
            let value = unquote(value).ok_or_else(|| err("unterminated quote"))?;
            r.fields.insert(key.to_owned(), value);
        }
        Ok(r)
    }
}

fn unquote(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    match bytes.first() {
        Some(b'\'') => v.strip_prefix('\'')?.strip_suffix('\'').map(str::to_owned),
        Some(b'"') => {
            let inner = v.strip_prefix('"')?.strip_suffix('"')?;
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    out.push(chars.next()?);
                } else {
                    out.push(c);
                }
            }
            Some(out)
        }
        _ => Some(v.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ExtensionName {
        s.parse().unwrap()
    }

    #[test]
    fn os_targets_round_trip() {
        for s in ["_any", "ubuntu:24.04", "flatcar@1.0", "fedora:42"] {
            assert_eq!(s.parse::<OsTarget>().unwrap().to_string(), s);
        }
        assert_eq!(
            "flatcar".parse::<OsTarget>().unwrap(),
            OsTarget::SysextLevel { id: "flatcar".into(), level: "1.0".into() }
        );
    }

    #[test]
    fn os_targets_refuse_what_never_matches() {
        for s in ["Ubuntu:24.04", "ubuntu", "ubuntu:", ":24.04", "ubuntu:24 04", "any"] {
            assert!(s.parse::<OsTarget>().is_err(), "{s}");
        }
        let err = "ubuntu".parse::<OsTarget>().unwrap_err().to_string();
        assert!(err.contains("add :VERSION_ID"), "{err}");
    }

    #[test]
    fn renders_like_flatcar_plus_identity() {
        let r = ExtensionRelease::for_image(
            &name("kubernetes"),
            &"v1.31.3".parse().unwrap(),
            Arch::X86_64,
            &OsTarget::Any,
            true,
        );
        assert_eq!(
            r.render(),
            "ID=_any\nARCHITECTURE=x86-64\nSYSEXT_ID=kubernetes\nSYSEXT_VERSION_ID=v1.31.3\nEXTENSION_RELOAD_MANAGER=1\n"
        );
        let r = ExtensionRelease::for_image(
            &name("cni"),
            &"v1.6.2".parse().unwrap(),
            Arch::Arm64,
            &"ubuntu:24.04".parse().unwrap(),
            false,
        );
        assert_eq!(
            r.render(),
            "ID=ubuntu\nVERSION_ID=24.04\nARCHITECTURE=arm64\nSYSEXT_ID=cni\nSYSEXT_VERSION_ID=v1.6.2\n"
        );
    }

    #[test]
    fn parses_os_release_syntax() {
        let r = ExtensionRelease::parse("# c\n\nID=\"flatcar\"\nSYSEXT_LEVEL='1.0'\nNAME=\"A \\\"q\\\"\"\n").unwrap();
        assert_eq!(r.get("ID"), Some("flatcar"));
        assert_eq!(r.get("SYSEXT_LEVEL"), Some("1.0"));
        assert_eq!(r.get("NAME"), Some("A \"q\""));
        assert!(ExtensionRelease::parse("ID\n").is_err());
        assert!(ExtensionRelease::parse("ID=\"x\n").is_err());
        let round = ExtensionRelease::parse(&r.render()).unwrap();
        assert_eq!(round, r);
    }
}
