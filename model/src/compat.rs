//! "Will it merge?": systemd-sysext's compatibility rules, applied before writing.
//!
//! systemd skips an incompatible extension *silently* at boot (exit 0, one debug-level log
//! line), so a node would come up without kubelet and nobody would know why. This is
//! `extension_release_validate` from systemd (spec-digest §1.5) in the same order, so the
//! first reason systemd would have reported is the one composer reports.

use serde::Serialize;

use crate::{Arch, ExtensionRelease};

/// The host side of the comparison: the target image's os-release, CPU architecture and,
/// when known, systemd version.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    /// The target's os-release fields.
    pub os_release: ExtensionRelease,
    /// The target's architecture.
    pub arch: Arch,
    /// The target's systemd major version (`255`), if it could be determined. Unknown means
    /// the rules of the newest systemd are applied.
    pub systemd: Option<u32>,
}

/// The first systemd with systemd-sysext.
pub const FIRST_SYSEXT_SYSTEMD: u32 = 248;
/// The first systemd that knows `ID=_any` and checks `ARCHITECTURE=`; older ones compare
/// `ID=_any` literally with the host's ID, so such an image is skipped, and ignore
/// `ARCHITECTURE=`.
pub const ANY_ID_SYSTEMD: u32 = 252;

/// The systemd major version in the file name of its private library,
/// `libsystemd-shared-<version>.so`, which every systemd installs (Debian 12:
/// `libsystemd-shared-252.so`, Fedora: `libsystemd-shared-254.5-1.fc39.so`).
pub fn systemd_version_of_library(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix("libsystemd-shared-")?;
    if !rest.ends_with(".so") {
        return None;
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || !matches!(rest.as_bytes().get(digits), Some(b'.' | b'-' | b'~')) {
        return None;
    }
    rest[..digits].parse().ok()
}

/// Why an extension would be accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum Accepted {
    /// `ID=_any`: no version check at all.
    AnyId,
    /// The host declares neither `VERSION_ID` nor `SYSEXT_LEVEL` (rolling release); `ID` matched.
    RollingHost,
    /// `ID` and `SYSEXT_LEVEL` match.
    SysextLevel {
        /// The shared level.
        level: String,
    },
    /// `ID` and `VERSION_ID` match.
    VersionId {
        /// The shared version.
        version_id: String,
    },
    /// The host has `SYSEXT_LEVEL` but no `VERSION_ID` and the extension no level: systemd
    /// falls through and accepts.
    IdOnly,
}

/// Why systemd-sysext would skip an extension at boot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Incompatible {
    /// The extension-release file has no fields.
    #[error("its extension-release file is empty")]
    EmptyRelease,
    /// `SYSEXT_SCOPE` excludes ordinary systems.
    #[error("SYSEXT_SCOPE='{scope}' does not include 'system'; expected 'system' in the list (the default is 'system portable')")]
    Scope {
        /// The extension's scope list.
        scope: String,
    },
    /// `ARCHITECTURE` differs from the host's.
    #[error("ARCHITECTURE={extension} but the image is {host}; expected ARCHITECTURE={host} or _any")]
    Architecture {
        /// The extension's value.
        extension: String,
        /// The host's.
        host: Arch,
    },
    /// No `ID`.
    #[error("its extension-release has no ID; expected ID={host_id} or ID=_any")]
    MissingId {
        /// The host's ID.
        host_id: String,
    },
    /// `ID` differs.
    #[error("ID={extension} but the image's os-release has ID={host}; expected ID={host} or ID=_any")]
    Id {
        /// The extension's ID.
        extension: String,
        /// The host's ID.
        host: String,
    },
    /// Both declare a level and they differ.
    #[error(
        "SYSEXT_LEVEL={extension} but the image's os-release has SYSEXT_LEVEL={host}; expected SYSEXT_LEVEL={host}"
    )]
    SysextLevel {
        /// The extension's level.
        extension: String,
        /// The host's level.
        host: String,
    },
    /// The host pins `VERSION_ID` and the extension has none.
    #[error(
        "its extension-release has no VERSION_ID (nor a SYSEXT_LEVEL the host declares); expected VERSION_ID={host}"
    )]
    MissingVersionId {
        /// The host's VERSION_ID.
        host: String,
    },
    /// `VERSION_ID` differs.
    #[error("VERSION_ID={extension} but the image's os-release has VERSION_ID={host}; expected VERSION_ID={host}")]
    VersionId {
        /// The extension's VERSION_ID.
        extension: String,
        /// The host's.
        host: String,
    },
    /// The host's systemd predates systemd-sysext.
    #[error("the image's systemd {systemd} has no systemd-sysext (it arrived in systemd {FIRST_SYSEXT_SYSTEMD})")]
    NoSysext {
        /// The host's systemd version.
        systemd: u32,
    },
    /// `ID=_any` on a systemd that compares it literally.
    #[error("ID=_any needs systemd {ANY_ID_SYSTEMD} or later, but the image has systemd {systemd}, which compares ID=_any with ID={host_id} and skips the image; build it for this OS instead (bakery --os {host_id}:VERSION_ID)")]
    AnyIdTooOld {
        /// The host's systemd version.
        systemd: u32,
        /// The host's ID.
        host_id: String,
    },
}

fn nonempty<'a>(r: &'a ExtensionRelease, key: &str) -> Option<&'a str> {
    r.get(key).filter(|v| !v.is_empty())
}

/// Applies systemd-sysext's matching rules for a regular (non-initrd) system.
pub fn check(ext: &ExtensionRelease, host: &Host) -> Result<Accepted, Incompatible> {
    if ext.fields().is_empty() {
        return Err(Incompatible::EmptyRelease);
    }
    if let Some(v) = host.systemd.filter(|v| *v < FIRST_SYSEXT_SYSTEMD) {
        return Err(Incompatible::NoSysext { systemd: v });
    }
    let scope = nonempty(ext, "SYSEXT_SCOPE").unwrap_or("system portable");
    if !scope.split_whitespace().any(|s| s == "system") {
        return Err(Incompatible::Scope { scope: scope.to_owned() });
    }
    // Architecture comes before ID in systemd, so an arm64 `_any` image is refused for its
    // architecture, not accepted for its ID.
    if let Some(a) = nonempty(ext, "ARCHITECTURE") {
        if a != "_any" && a != host.arch.as_str() {
            return Err(Incompatible::Architecture { extension: a.to_owned(), host: host.arch });
        }
    }
    let host_id = host.os_release.get("ID").unwrap_or_default();
    let Some(id) = nonempty(ext, "ID") else {
        return Err(Incompatible::MissingId { host_id: host_id.to_owned() });
    };
    if id == "_any" {
        return match host.systemd {
            Some(v) if v < ANY_ID_SYSTEMD => Err(Incompatible::AnyIdTooOld { systemd: v, host_id: host_id.to_owned() }),
            _ => Ok(Accepted::AnyId),
        };
    }
    // ID_LIKE matching arrived only in systemd 258; the images targeted run 252–257.
    if id != host_id {
        return Err(Incompatible::Id { extension: id.to_owned(), host: host_id.to_owned() });
    }
    let host_version = nonempty(&host.os_release, "VERSION_ID");
    let host_level = nonempty(&host.os_release, "SYSEXT_LEVEL");
    if host_version.is_none() && host_level.is_none() {
        return Ok(Accepted::RollingHost);
    }
    let ext_level = nonempty(ext, "SYSEXT_LEVEL");
    if let (Some(h), Some(e)) = (host_level, ext_level) {
        return if h == e {
            Ok(Accepted::SysextLevel { level: h.to_owned() })
        } else {
            Err(Incompatible::SysextLevel { extension: e.to_owned(), host: h.to_owned() })
        };
    }
    if let Some(h) = host_version {
        return match nonempty(ext, "VERSION_ID") {
            None => Err(Incompatible::MissingVersionId { host: h.to_owned() }),
            Some(e) if e == h => Ok(Accepted::VersionId { version_id: h.to_owned() }),
            Some(e) => Err(Incompatible::VersionId { extension: e.to_owned(), host: h.to_owned() }),
        };
    }
    Ok(Accepted::IdOnly)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLATCAR: &str = "ID=flatcar\nID_LIKE=coreos\nVERSION_ID=3815.2.0\nSYSEXT_LEVEL=1.0\n";
    const UBUNTU: &str = "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n";

    fn host(os: &str) -> Host {
        Host { os_release: ExtensionRelease::parse(os).unwrap(), arch: Arch::X86_64, systemd: None }
    }

    fn verdict(ext: &str, os: &str) -> Result<Accepted, Incompatible> {
        check(&ExtensionRelease::parse(ext).unwrap(), &host(os))
    }

    /// The empirical truth table of spec-digest §1.5 (systemd 252 on a Flatcar-like host).
    #[test]
    fn flatcar_truth_table() {
        assert!(verdict("ID=flatcar\nSYSEXT_LEVEL=1.0", FLATCAR).is_ok());
        assert!(verdict("ID=flatcar\nVERSION_ID=3815.2.0", FLATCAR).is_ok());
        assert_eq!(
            verdict("ID=flatcar\nSYSEXT_LEVEL=1.0\nVERSION_ID=1", FLATCAR),
            Ok(Accepted::SysextLevel { level: "1.0".into() })
        );
        assert!(matches!(
            verdict("ID=flatcar\nSYSEXT_LEVEL=2.0\nVERSION_ID=3815.2.0", FLATCAR),
            Err(Incompatible::SysextLevel { .. })
        ));
        assert!(matches!(verdict("ID=flatcar", FLATCAR), Err(Incompatible::MissingVersionId { .. })));
        assert_eq!(verdict("ID=_any", FLATCAR), Ok(Accepted::AnyId));
        assert!(matches!(verdict("ID=_any\nARCHITECTURE=arm64", FLATCAR), Err(Incompatible::Architecture { .. })));
        assert!(matches!(verdict("ARCHITECTURE=x86-64", FLATCAR), Err(Incompatible::MissingId { .. })));
        // Values compare as exact strings.
        assert!(verdict("ID=Flatcar\nSYSEXT_LEVEL=1.0", FLATCAR).is_err());
        assert!(verdict("ID=flatcar\nSYSEXT_LEVEL=1", FLATCAR).is_err());
    }

    #[test]
    fn ubuntu_truth_table() {
        assert!(matches!(verdict("ID=ubuntu\nSYSEXT_LEVEL=1.0", UBUNTU), Err(Incompatible::MissingVersionId { .. })));
        assert!(matches!(verdict("ID=debian\nVERSION_ID=24.04", UBUNTU), Err(Incompatible::Id { .. })));
        assert_eq!(
            verdict("ID=ubuntu\nVERSION_ID=24.04", UBUNTU),
            Ok(Accepted::VersionId { version_id: "24.04".into() })
        );
        assert!(matches!(verdict("ID=ubuntu\nVERSION_ID=22.04", UBUNTU), Err(Incompatible::VersionId { .. })));
        assert_eq!(verdict("ID=_any\nARCHITECTURE=x86-64", UBUNTU), Ok(Accepted::AnyId));
    }

    #[test]
    fn rolling_hosts_scopes_and_edge_cases() {
        assert_eq!(verdict("ID=arch", "ID=arch\n"), Ok(Accepted::RollingHost));
        assert_eq!(verdict("ID=x", "ID=x\nSYSEXT_LEVEL=1\n"), Ok(Accepted::IdOnly));
        assert!(matches!(verdict("ID=_any\nSYSEXT_SCOPE=initrd", FLATCAR), Err(Incompatible::Scope { .. })));
        assert!(verdict("ID=_any\nSYSEXT_SCOPE=\"initrd system\"", FLATCAR).is_ok());
        assert!(verdict("ID=_any\nARCHITECTURE=_any", FLATCAR).is_ok());
        assert_eq!(check(&ExtensionRelease::default(), &host(FLATCAR)), Err(Incompatible::EmptyRelease));
        // Architecture is checked before ID: a wrong-ID, wrong-arch image fails on arch.
        assert!(matches!(verdict("ID=fedora\nARCHITECTURE=arm64", FLATCAR), Err(Incompatible::Architecture { .. })));
        let msg = verdict("ID=ubuntu\nVERSION_ID=24.04\nARCHITECTURE=x86-64", FLATCAR).unwrap_err().to_string();
        assert_eq!(msg, "ID=ubuntu but the image's os-release has ID=flatcar; expected ID=flatcar or ID=_any");
    }

    #[test]
    fn old_systemd_skips_any_id() {
        let ubuntu_2204 = "ID=ubuntu\nVERSION_ID=22.04\n";
        let on = |ext: &str, systemd: Option<u32>| {
            check(&ExtensionRelease::parse(ext).unwrap(), &Host { systemd, ..host(ubuntu_2204) })
        };
        let err = on("ID=_any\nARCHITECTURE=x86-64", Some(249)).unwrap_err();
        assert_eq!(err, Incompatible::AnyIdTooOld { systemd: 249, host_id: "ubuntu".into() });
        assert!(err.to_string().starts_with("ID=_any needs systemd 252 or later, but the image has systemd 249"));
        assert_eq!(on("ID=_any", Some(252)), Ok(Accepted::AnyId));
        assert_eq!(on("ID=_any", None), Ok(Accepted::AnyId));
        // 249 ignores ARCHITECTURE: an image pinned to the release with it still merges.
        assert!(on("ID=ubuntu\nVERSION_ID=22.04\nARCHITECTURE=x86-64", Some(249)).is_ok());
        assert_eq!(on("ID=ubuntu\nVERSION_ID=22.04", Some(247)), Err(Incompatible::NoSysext { systemd: 247 }));
    }

    #[test]
    fn systemd_versions_from_library_names() {
        assert_eq!(systemd_version_of_library("libsystemd-shared-252.so"), Some(252));
        assert_eq!(systemd_version_of_library("libsystemd-shared-254.5-1.fc39.so"), Some(254));
        for bad in [
            "libsystemd-shared-.so",
            "libsystemd-shared-x.so",
            "libsystemd-core-255.so",
            "libsystemd-shared-255",
            "libsystemd-shared-99999999999.so",
            "libsystemd-shared-255x.so",
        ] {
            assert_eq!(systemd_version_of_library(bad), None, "{bad}");
        }
    }
}
