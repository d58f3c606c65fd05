//! Root tests' private mount namespaces, in which the real systemd-sysext merges what a
//! test installed onto the running system's paths without touching the machine's own.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use sysext_tests::sandbox::UBUNTU_OS_RELEASE;

/// The namespace set-up shared by the root tests: a private /run, an overlay over /etc, a
/// tmpfs /opt and /var/lib, an Ubuntu os-release; extensions unmerged on exit.
pub fn namespace_prelude(d: &Path) -> String {
    let d = format!("'{}'", d.display());
    format!(
        "set -eu
mount --make-rshared /
mount -t tmpfs tmpfs /run
mkdir -p {d}/etc-up {d}/etc-work
mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-up,workdir={d}/etc-work /etc
mount -t tmpfs tmpfs /opt
mount -t tmpfs tmpfs /var/lib
printf '%s' '{UBUNTU_OS_RELEASE}' >{d}/os-release
rm -f /etc/os-release && cp {d}/os-release /etc/os-release
mount --bind {d}/os-release /usr/lib/os-release
trap 'systemd-sysext unmerge >/dev/null 2>&1 || true' EXIT
"
    )
}

pub fn run_in_namespace(script: &str) -> Output {
    // Loop devices are global: one namespace at a time, so the devices a run leaves behind
    // are told apart from another test's.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = sysext_tests::sandbox::attached_loop_devices();
    let o = Command::new("unshare").args(["-m", "sh", "-c", script]).output().unwrap();
    let mut left = Vec::new();
    for _ in 0..50 {
        left = sysext_tests::sandbox::attached_loop_devices().into_iter().filter(|l| !before.contains(l)).collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(left.is_empty(), "loop devices left: {left:?}");
    o
}
