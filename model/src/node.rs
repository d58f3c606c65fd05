//! Where things live on a node: the layout every way of installing extensions shares.
//!
//! Flatcar's convention (interop-formats.md B6), which systemd-sysupdate's transfer files also
//! encode: versioned images in `/opt/extensions/<ext>/`, the stable link systemd-sysext merges
//! through in `/etc/extensions/<ext>.raw` (its name binds `extension-release.<ext>`), transfer
//! files in `/etc/sysupdate.<ext>.d/`. A disk composed by `composer compose`, a node
//! provisioned by Ignition or cloud-init, and one kept current by the node agent all use
//! exactly these paths, so they end up identical.

use crate::{ExtensionName, ImageName};

/// Where systemd-sysext looks for the active links (highest precedence).
pub const EXTENSIONS_DIR: &str = "/etc/extensions";
/// Parent of the per-extension image directories.
pub const IMAGES_ROOT: &str = "/opt/extensions";
/// The default sysupdate component's directory, which holds `noop.conf`.
pub const SYSUPDATE_DEFAULT_DIR: &str = "/etc/sysupdate.d";
/// The unit that merges extensions at boot.
pub const SYSEXT_SERVICE: &str = "systemd-sysext.service";
/// The timer that runs systemd-sysupdate.
pub const SYSUPDATE_TIMER: &str = "systemd-sysupdate.timer";
/// Where systemd-pull (which sysupdate runs for `url-file` sources) reads the keyring that
/// `Verify=yes` checks `SHA256SUMS.gpg` against.
pub const SYSUPDATE_KEYRING: &str = "/etc/systemd/import-pubring.gpg";
/// Where systemd-sysupdate.timer is wanted from (its `WantedBy=`).
pub const SYSUPDATE_WANTED_BY: &str = "timers.target";
/// Where units are enabled by the admin.
pub const ETC_UNITS_DIR: &str = "/etc/systemd/system";
/// Where systemd-sysext.service is wanted from (its `WantedBy=`).
pub const SYSEXT_WANTED_BY: &str = "sysinit.target";
/// The unit composer installs where the OS has nothing that starts the units extensions
/// ship once they are merged (Debian, Ubuntu); Flatcar has `ensure-sysext.service`.
pub const SYSEXT_UNITS_SERVICE: &str = "sysext-units.service";
/// Flatcar's built-in extensions that ship a container runtime. Installing our containerd
/// beside them would merge two runtimes; Flatcar documents masking them with links to
/// `/dev/null` (which also stops its tmpfiles from re-creating the links).
pub const FLATCAR_BUILTIN_RUNTIMES: [&str; 2] = ["containerd-flatcar", "docker-flatcar"];
/// The extension whose presence masks [`FLATCAR_BUILTIN_RUNTIMES`].
pub const CONTAINERD: &str = "containerd";
/// What a masking link points at.
pub const MASKED: &str = "/dev/null";

/// `/opt/extensions/<ext>`: the directory holding an extension's versioned images.
pub fn image_dir(name: &ExtensionName) -> String {
    format!("{IMAGES_ROOT}/{name}")
}

/// `/opt/extensions/<ext>/<ext>-<version>-<arch>.raw`.
pub fn image_path(image: &ImageName) -> String {
    format!("{}/{image}", image_dir(&image.name))
}

/// `/etc/extensions/<ext>.raw`: the link systemd-sysext merges the extension through.
pub fn current_link(name: &ExtensionName) -> String {
    format!("{EXTENSIONS_DIR}/{name}.raw")
}

/// `/etc/extensions/<name>.raw` for a name that need not be one of ours (Flatcar's built-ins).
pub fn link_for(name: &str) -> String {
    format!("{EXTENSIONS_DIR}/{name}.raw")
}

/// `/etc/sysupdate.<ext>.d`: the extension's sysupdate component.
pub fn sysupdate_dir(name: &ExtensionName) -> String {
    format!("/etc/sysupdate.{name}.d")
}

/// `/etc/sysupdate.d/noop.conf`.
pub fn noop_transfer() -> String {
    format!("{SYSUPDATE_DEFAULT_DIR}/noop.conf")
}

/// `/etc/systemd/system/<unit>`: where a unit the admin (or composer) installs lives.
pub fn etc_unit(unit: &str) -> String {
    format!("{ETC_UNITS_DIR}/{unit}")
}

/// `/etc/systemd/system/<target>.wants`.
pub fn wants_dir(target: &str) -> String {
    format!("{ETC_UNITS_DIR}/{target}.wants")
}

/// The link that enables a unit for a target: `/etc/systemd/system/<target>.wants/<unit>`.
pub fn wants_link(target: &str, unit: &str) -> String {
    format!("{}/{unit}", wants_dir(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatcar_paths() {
        let image: ImageName = "kubernetes-v1.31.3-x86-64.raw".parse().unwrap();
        assert_eq!(image_path(&image), "/opt/extensions/kubernetes/kubernetes-v1.31.3-x86-64.raw");
        assert_eq!(current_link(&image.name), "/etc/extensions/kubernetes.raw");
        assert_eq!(sysupdate_dir(&image.name), "/etc/sysupdate.kubernetes.d");
        assert_eq!(noop_transfer(), "/etc/sysupdate.d/noop.conf");
        assert_eq!(
            wants_link(SYSEXT_WANTED_BY, SYSEXT_SERVICE),
            "/etc/systemd/system/sysinit.target.wants/systemd-sysext.service"
        );
        assert_eq!(etc_unit(SYSEXT_UNITS_SERVICE), "/etc/systemd/system/sysext-units.service");
        assert_eq!(link_for(FLATCAR_BUILTIN_RUNTIMES[0]), "/etc/extensions/containerd-flatcar.raw");
    }
}
