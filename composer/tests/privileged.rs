//! Tier 2 (root): the composed root filesystem, loop-mounted read-only, feeds the real
//! `systemd-sysext merge` in a private mount namespace; the merged kubelet, containerd and
//! CNI plugins run. Skipped loudly when not root.

mod common;

use common::*;
use sysext_tests::sandbox::{FLATCAR_OS_RELEASE, UBUNTU_OS_RELEASE};
use sysext_tests::upstream::runs_check;
use sysext_tests::{MergeSandbox, MERGE_TOOLS};

fn checks(arch: sysext_tests::Arch) -> String {
    let mut s = String::new();
    for (bin, version) in [("kubelet", K8S), ("kubectl", K8S), ("containerd", CONTAINERD), ("runc", RUNC)] {
        s.push_str(&runs_check(bin, version, arch));
    }
    s.push_str("test -x /usr/libexec/cni/bridge\n");
    // The links came from the composed filesystem, not from the sandbox.
    s.push_str("readlink /etc/extensions/kubernetes.raw\n");
    s.push_str("systemd-sysext list --no-legend | awk '{print $1}' | sort | tr '\\n' ' '\n");
    s
}

fn merge_composed(disk: &sysext_tests::disk::SyntheticDisk, out: &std::path::Path, os_release: &str) {
    let arch = extensions().arch;
    let mut node = MergeSandbox::new(os_release);
    node.composed_root(out, disk.root_offset, disk.root_size);
    let res = node.run(&checks(arch));
    assert!(res.success, "merge failed:\nstdout: {}\nstderr: {}", res.stdout, res.stderr);
    assert!(res.stdout.contains(&format!("/opt/extensions/kubernetes/kubernetes-{K8S}-{arch}.raw")), "{}", res.stdout);
    assert!(res.stdout.contains("cni containerd kubernetes"), "{}", res.stdout);
    assert_eq!(res.leftover_loop_devices, Vec::<String>::new(), "loop devices left attached");
}

fn kubelet_runs_from_a_composed_flatcar_disk() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    let out = work.path().join("composed.img");
    assert_ok(&compose(&disk.path, &out, &exts.all(), &[]));
    merge_composed(&disk, &out, FLATCAR_OS_RELEASE);
}

fn kubelet_runs_from_a_composed_ubuntu_disk() {
    let Case { exts, work } = case();
    let disk = ubuntu_disk(work.path());
    let out = work.path().join("composed.img");
    assert_ok(&compose(&disk.path, &out, &exts.all(), &[]));
    merge_composed(&disk, &out, UBUNTU_OS_RELEASE);
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(kubelet_runs_from_a_composed_flatcar_disk).root().needs(disk_needs()).tools(&MERGE_TOOLS),
        sysext_tests::test!(kubelet_runs_from_a_composed_ubuntu_disk).root().needs(disk_needs()).tools(&MERGE_TOOLS),
    ])
}
