//! Running the real `systemd-sysext merge` against installed images without touching the host.
//!
//! Everything happens in a private mount namespace (`unshare -m`): a tmpfs `/run`, an overlay
//! over `/etc` whose upper layer lives in a temporary directory, tmpfs over `/opt` and
//! `/var/lib`, and a bind-mounted os-release. The namespace's `/` is made shared *inside* the
//! namespace because systemd-sysext prepares its overlay in a child namespace and relies on
//! propagation to make it visible; since the namespace starts private, nothing reaches the
//! host. When the shell exits, the namespace and every mount in it (and the loop devices
//! systemd-sysext attached with autoclear) go away, even if a check failed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How an image is installed on the simulated node.
#[derive(Debug, Clone)]
enum Install {
    /// `/var/lib/extensions/<name>.raw` (a copy).
    VarLib { name: String, image: PathBuf },
    /// `/opt/extensions/<name>/<file>` plus the symlink `/etc/extensions/<name>.raw` → it.
    EtcLink { name: String, image: PathBuf },
    /// The extensions a composed disk image carries: its root partition mounted read-only
    /// (loop, at an offset), with its `/opt/extensions` and `/etc/extensions` bound over the
    /// node's, so the links resolve exactly as they will on the booted image.
    ComposedRoot { disk: PathBuf, offset: u64, size: u64 },
}

/// What [`MergeSandbox::run`] runs: declare these as a test's tools.
pub const MERGE_TOOLS: [&str; 5] = ["systemd-sysext", "unshare", "mount", "umount", "losetup"];

/// A Flatcar-like host identity (`ID=flatcar`, `SYSEXT_LEVEL=1.0`).
pub const FLATCAR_OS_RELEASE: &str = "NAME=\"Flatcar Container Linux by Kinvolk\"\nID=flatcar\nID_LIKE=coreos\nVERSION=4152.2.0\nVERSION_ID=4152.2.0\nBUILD_ID=2025-01-01-0000\nSYSEXT_LEVEL=1.0\nPRETTY_NAME=\"Flatcar Container Linux by Kinvolk 4152.2.0 (Oklo)\"\n";

/// An Ubuntu-24.04-like host identity (no `SYSEXT_LEVEL`).
pub const UBUNTU_OS_RELEASE: &str = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nVERSION=\"24.04.1 LTS (Noble Numbat)\"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n";

/// A simulated node: an os-release and the images installed on it.
#[derive(Debug)]
pub struct MergeSandbox {
    dir: tempfile::TempDir,
    installs: Vec<Install>,
}

/// What a sandbox run printed.
#[derive(Debug)]
pub struct MergeOutput {
    /// Exit status of the whole script.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Loop devices attached by the run and still attached after it (should be none).
    pub leftover_loop_devices: Vec<String>,
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

impl MergeSandbox {
    /// A node with the given os-release contents.
    pub fn new(os_release: &str) -> Self {
        let dir = tempfile::tempdir().expect("creating the sandbox directory");
        std::fs::write(dir.path().join("os-release"), os_release).expect("writing os-release");
        Self { dir, installs: Vec::new() }
    }

    /// Installs `image` as `/var/lib/extensions/<name>.raw`.
    pub fn var_lib(&mut self, name: &str, image: &Path) -> &mut Self {
        self.installs.push(Install::VarLib { name: name.into(), image: image.into() });
        self
    }

    /// Installs `image` under `/opt/extensions/<name>/` with the link
    /// `/etc/extensions/<name>.raw` pointing at it (Flatcar's and sysupdate's layout).
    pub fn etc_link(&mut self, name: &str, image: &Path) -> &mut Self {
        self.installs.push(Install::EtcLink { name: name.into(), image: image.into() });
        self
    }

    /// Uses the extensions installed in the ext4 root partition (`offset`, `size` in bytes) of
    /// a composed disk image. The partition is loop-mounted read-only inside the namespace and
    /// unmounted when the script exits, whatever happened, so the loop device is released.
    pub fn composed_root(&mut self, disk: &Path, offset: u64, size: u64) -> &mut Self {
        self.installs.push(Install::ComposedRoot { disk: disk.into(), offset, size });
        self
    }

    /// Merges the installed images and runs `checks` (POSIX shell, `set -eu`) while they are
    /// merged; then unmerges.
    pub fn run(&self, checks: &str) -> MergeOutput {
        let d = self.dir.path();
        let mut s = String::from("set -eu\n");
        let _ = writeln!(s, "mount --make-rshared /");
        let _ = writeln!(s, "mount -t tmpfs tmpfs /run");
        let _ = writeln!(s, "mkdir -p {0}/etc-up {0}/etc-work", quote(d));
        let _ = writeln!(
            s,
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={0}/etc-up,workdir={0}/etc-work /etc",
            quote(d)
        );
        let _ = writeln!(s, "mount -t tmpfs tmpfs /opt");
        let _ = writeln!(s, "mount -t tmpfs tmpfs /var/lib");
        // systemd reads /etc/os-release first and falls back to /usr/lib/os-release.
        let _ = writeln!(s, "rm -f /etc/os-release && cp {}/os-release /etc/os-release", quote(d));
        let _ = writeln!(s, "mount --bind {}/os-release /usr/lib/os-release", quote(d));
        let _ = writeln!(s, "mkdir -p /etc/extensions /var/lib/extensions /opt/extensions");
        // Unmounting explicitly (not only by leaving the namespace) detaches the loop device
        // before this process returns, so callers can assert that nothing is left attached.
        let _ = writeln!(s, "cleanup() {{ systemd-sysext unmerge >/dev/null 2>&1 || true; umount /opt/extensions /etc/extensions {0}/root 2>/dev/null || true; }}", quote(d));
        let _ = writeln!(s, "trap cleanup EXIT");
        for install in &self.installs {
            match install {
                Install::ComposedRoot { disk, offset, size } => {
                    let root = d.join("root");
                    let _ = writeln!(s, "mkdir -p {}", quote(&root));
                    let _ = writeln!(
                        s,
                        "mount -t ext4 -o ro,noload,loop,offset={offset},sizelimit={size} {} {}",
                        quote(disk),
                        quote(&root)
                    );
                    let _ = writeln!(s, "mount --bind {} /opt/extensions", quote(&root.join("opt/extensions")));
                    let _ = writeln!(s, "mount --bind {} /etc/extensions", quote(&root.join("etc/extensions")));
                }
                Install::VarLib { name, image } => {
                    let _ = writeln!(s, "cp {} /var/lib/extensions/{name}.raw", quote(image));
                }
                Install::EtcLink { name, image } => {
                    let file = image.file_name().expect("image has a file name").to_string_lossy();
                    let _ = writeln!(s, "mkdir -p /opt/extensions/{name}");
                    let _ = writeln!(s, "cp {} /opt/extensions/{name}/{file}", quote(image));
                    let _ = writeln!(s, "ln -s /opt/extensions/{name}/{file} /etc/extensions/{name}.raw");
                }
            }
        }
        let _ = writeln!(s, "systemd-sysext merge");
        let _ = writeln!(s, "( {checks}\n)");
        let _ = writeln!(s, "systemd-sysext unmerge >/dev/null");
        // Loop devices are global: one merge at a time per test binary, so the devices a run
        // leaves behind can be told apart from another test's.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let before = attached_loop_devices();
        let out = Command::new("unshare").args(["-m", "sh", "-c", &s]).output().expect("running unshare");
        MergeOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            leftover_loop_devices: attached_loop_devices().into_iter().filter(|d| !before.contains(d)).collect(),
        }
    }
}

/// Loop devices currently attached (for asserting that tests clean up).
pub fn attached_loop_devices() -> Vec<String> {
    let out = Command::new("losetup").arg("-a").output().expect("running losetup");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}
