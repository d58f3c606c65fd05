//! Tier 2: images built by bakery, merged by the real `systemd-sysext` in a private mount
//! namespace (see `sysext_tests::sandbox`). Runs as root (CI does); skipped loudly otherwise.

mod common;

use std::path::PathBuf;

use common::*;
use sysext_tests::harness::Need;
use sysext_tests::sandbox::{FLATCAR_OS_RELEASE, UBUNTU_OS_RELEASE};
use sysext_tests::upstream::runs_check;
use sysext_tests::{Arch, FixtureServer, MergeSandbox, MERGE_TOOLS};

struct Built {
    _work: Work,
    kubernetes: PathBuf,
    containerd: PathBuf,
    cni: PathBuf,
}

fn build_all(arch: Arch, extra: &[&str]) -> Built {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let kubernetes = created(&create(&work, &up.mirror(), "kubernetes", K8S, arch, extra));
    let containerd = created(&create(&work, &up.mirror(), "containerd", CONTAINERD, arch, extra));
    let cni = created(&create(&work, &up.mirror(), "cni", CNI, arch, extra));
    Built { _work: work, kubernetes, containerd, cni }
}

/// Shell checks run while the images are merged: every binary runs and prints its version,
/// the units are in place, and the CNI unit's script populates a writable /opt/cni/bin.
fn merged_checks(arch: Arch) -> String {
    let mut s = String::new();
    for (bin, version) in [
        ("kubelet", K8S),
        ("kubeadm", K8S),
        ("kubectl", K8S),
        ("containerd", CONTAINERD),
        ("ctr", CONTAINERD),
        ("runc", RUNC),
    ] {
        s.push_str(&runs_check(bin, version, arch));
    }
    s.push_str("test -f /usr/lib/systemd/system/kubelet.service\n");
    s.push_str("test -f /usr/lib/systemd/system/containerd.service\n");
    s.push_str("grep -qx 'Upholds=kubelet.service' /usr/lib/systemd/system/multi-user.target.d/10-kubernetes.conf\n");
    s.push_str("test \"$(readlink /usr/libexec/kubernetes/kubelet-plugins)\" = /var/kubernetes/kubelet-plugins\n");
    s.push_str(
        "if touch /usr/bin/should-fail 2>/dev/null; then echo '/usr is writable while merged' >&2; exit 1; fi\n",
    );
    // /opt is not merged (no image ships /opt), so the unit's script can populate it.
    s.push_str("/usr/libexec/cni-sysext/populate-opt-cni-bin /usr/libexec/cni /opt/cni/bin >/dev/null\n");
    s.push_str("cmp /opt/cni/bin/bridge /usr/libexec/cni/bridge\n");
    s.push_str("test -x /opt/cni/bin/bridge\n");
    s.push_str("echo cilium > /opt/cni/bin/cilium-cni && echo mine > /opt/cni/bin/loopback\n");
    // The log stays in a variable: /tmp is the host's, shared by merges running in parallel.
    s.push_str("log=$(/usr/libexec/cni-sysext/populate-opt-cni-bin /usr/libexec/cni /opt/cni/bin)\n");
    s.push_str(
        "test \"$(cat /opt/cni/bin/loopback)\" = mine || { echo 'an add-on plugin was overwritten' >&2; exit 1; }\n",
    );
    s.push_str(
        "printf '%s\\n' \"$log\" | grep -q 'keeping /opt/cni/bin/loopback' || { echo \"add-on plugin not reported as kept: $log\" >&2; exit 1; }\n",
    );
    s.push_str("systemd-sysext list --no-legend | awk '{print $1}' | sort | tr '\\n' ' '\n");
    s
}

fn host_arch() -> Arch {
    Arch::host().expect("the harness runs this test only on x86-64 and arm64 hosts")
}

fn merges_on_a_flatcar_like_node() {
    let arch = host_arch();
    let built = build_all(arch, &[]);
    let mut node = MergeSandbox::new(FLATCAR_OS_RELEASE);
    // Both layouts nodes use: a plain file in /var/lib/extensions, and Flatcar's
    // versioned file in /opt/extensions with a stable /etc/extensions link.
    node.var_lib("kubernetes", &built.kubernetes).etc_link("containerd", &built.containerd).etc_link("cni", &built.cni);
    let out = node.run(&merged_checks(arch));
    assert!(out.success, "merge failed:\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("cni containerd kubernetes"), "{}", out.stdout);
    assert_eq!(out.leftover_loop_devices, Vec::<String>::new(), "loop devices left attached");
}

fn merges_on_an_ubuntu_like_node() {
    let arch = host_arch();
    let built = build_all(arch, &[]);
    let mut node = MergeSandbox::new(UBUNTU_OS_RELEASE);
    node.etc_link("kubernetes", &built.kubernetes).var_lib("containerd", &built.containerd).var_lib("cni", &built.cni);
    let out = node.run(&merged_checks(arch));
    assert!(out.success, "merge failed:\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("cni containerd kubernetes"), "{}", out.stdout);
    assert_eq!(out.leftover_loop_devices, Vec::<String>::new(), "loop devices left attached");
}

/// systemd skips an incompatible image silently (exit 0), so the check is that the image's
/// files are absent; the same image on a matching node is the control.
const ABSENT: &str = "if test -e /usr/bin/kubelet; then echo MERGED; else echo SKIPPED; fi";

fn systemd_refuses_an_image_for_another_architecture() {
    let arch = host_arch();
    let other = Arch::ALL.into_iter().find(|a| *a != arch).unwrap();
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let foreign = created(&create(&work, &up.mirror(), "kubernetes", K8S, other, &[]));
    let native = created(&create(&work, &up.mirror(), "kubernetes", K8S, arch, &[]));

    let out = MergeSandbox::new(FLATCAR_OS_RELEASE).var_lib("kubernetes", &foreign).run(ABSENT);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "SKIPPED", "systemd merged a {other} image on {arch}:\n{}", out.stderr);
    let out = MergeSandbox::new(FLATCAR_OS_RELEASE).var_lib("kubernetes", &native).run(ABSENT);
    assert_eq!(out.stdout.trim(), "MERGED", "control: {}", out.stderr);
}

fn systemd_refuses_an_ubuntu_image_on_flatcar() {
    let arch = host_arch();
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let ubuntu = created(&create(&work, &up.mirror(), "kubernetes", K8S, arch, &["--os", "ubuntu:24.04"]));

    let out = MergeSandbox::new(FLATCAR_OS_RELEASE).etc_link("kubernetes", &ubuntu).run(ABSENT);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "SKIPPED", "an ID=ubuntu image merged on Flatcar:\n{}", out.stderr);
    let out = MergeSandbox::new(UBUNTU_OS_RELEASE).etc_link("kubernetes", &ubuntu).run(ABSENT);
    assert_eq!(out.stdout.trim(), "MERGED", "control on Ubuntu: {}", out.stderr);

    // `--os flatcar` (ID=flatcar, SYSEXT_LEVEL=1.0) is the mirror image of the same rule.
    let work = Work::new();
    let flatcar = created(&create(&work, &up.mirror(), "kubernetes", K8S, arch, &["--os", "flatcar"]));
    let out = MergeSandbox::new(FLATCAR_OS_RELEASE).etc_link("kubernetes", &flatcar).run(ABSENT);
    assert_eq!(out.stdout.trim(), "MERGED", "{}", out.stderr);
    let out = MergeSandbox::new(UBUNTU_OS_RELEASE).etc_link("kubernetes", &flatcar).run(ABSENT);
    assert_eq!(out.stdout.trim(), "SKIPPED", "{}", out.stderr);
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(merges_on_a_flatcar_like_node).root().needs([Need::SupportedHost]).tools(&MERGE_TOOLS),
        sysext_tests::test!(merges_on_an_ubuntu_like_node).root().needs([Need::SupportedHost]).tools(&MERGE_TOOLS),
        sysext_tests::test!(systemd_refuses_an_image_for_another_architecture)
            .root()
            .needs([Need::SupportedHost])
            .tools(&MERGE_TOOLS),
        sysext_tests::test!(systemd_refuses_an_ubuntu_image_on_flatcar)
            .root()
            .needs([Need::SupportedHost])
            .tools(&MERGE_TOOLS),
    ])
}
