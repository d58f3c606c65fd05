//! The fake upstreams: real URL layouts, well-formed checksum files, deterministic content.

use std::io::Read;
use std::time::Duration;

use signing::Sha256Digest;
use sysext_tests::upstream::{self, CNI_PLUGINS, CONTAINERD_BINARIES};
use sysext_tests::{Arch, FakeUpstream, FixtureServer};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap()
}

fn get(url: &str) -> Vec<u8> {
    let resp = client().get(url).send().unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.bytes().unwrap().to_vec()
}

/// (name, mode, type, data) of each member of a served tarball.
fn members(tgz: &[u8]) -> Vec<(String, u32, tar::EntryType, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mode = e.header().mode().unwrap();
            let kind = e.header().entry_type();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, mode, kind, data)
        })
        .collect()
}

fn all(server: &FixtureServer) -> FakeUpstream<'_> {
    let up = FakeUpstream::new(server);
    up.kubernetes("v1.31.3").containerd("2.0.4", "v1.2.5").cni("v1.6.2");
    up
}

#[test]
fn exact_paths_are_served() {
    let server = FixtureServer::start();
    let up = all(&server);
    let expected = [
        "/v1.31.3/bin/linux/amd64/kubelet",
        "/v1.31.3/bin/linux/arm64/kubeadm.sha256",
        "/v1.31.3/bin/linux/amd64/kubectl",
        "/containerd/containerd/releases/download/v2.0.4/containerd-static-2.0.4-linux-amd64.tar.gz",
        "/containerd/containerd/releases/download/v2.0.4/containerd-static-2.0.4-linux-arm64.tar.gz.sha256sum",
        "/containerd/containerd/v2.0.4/script/setup/runc-version",
        "/opencontainers/runc/releases/download/v1.2.5/runc.amd64",
        "/opencontainers/runc/releases/download/v1.2.5/runc.arm64",
        "/opencontainers/runc/releases/download/v1.2.5/runc.sha256sum",
        "/containernetworking/plugins/releases/download/v1.6.2/cni-plugins-linux-amd64-v1.6.2.tgz",
        "/containernetworking/plugins/releases/download/v1.6.2/cni-plugins-linux-arm64-v1.6.2.tgz.sha256",
    ];
    for path in expected {
        assert_eq!(get(&up.url(path)), up.bytes(path), "{path}");
    }
    // 3 binaries x 2 files x 2 arches + containerd 2x2 + pin + runc 5 + cni 2x2.
    assert_eq!(up.paths().len(), 12 + 4 + 1 + 5 + 4);
    assert_eq!(up.mirror(), server.url());
    assert_eq!(get(&up.url("/containerd/containerd/v2.0.4/script/setup/runc-version")), b"v1.2.5\n");
}

#[test]
fn kubernetes_binaries_and_bare_digests() {
    let server = FixtureServer::start();
    let up = FakeUpstream::new(&server);
    up.kubernetes("1.31.3"); // the v is added
    for arch in Arch::ALL {
        for name in upstream::KUBERNETES_BINARIES {
            let path = upstream::kubernetes_path("v1.31.3", arch, name);
            let exe = get(&up.url(&path));
            assert_eq!(&exe[..4], b"\x7fELF");
            let msg = format!("{name} v1.31.3 linux/{}\n", arch.go_arch());
            assert!(exe.ends_with(msg.as_bytes()), "{path}");
            let sum = String::from_utf8(get(&up.url(&format!("{path}.sha256")))).unwrap();
            assert_eq!(sum.len(), 64, "bare digest, no newline: {sum:?}");
            assert_eq!(sum, Sha256Digest::of(&exe).to_string());
        }
    }
}

/// Parses `<hex>  <name>\n` lines into (digest, name).
fn sum_lines(text: &str) -> Vec<(String, String)> {
    assert!(text.ends_with('\n'));
    text.lines()
        .map(|l| {
            let (hex, name) = l.split_once("  ").unwrap();
            assert_eq!(hex.len(), 64);
            assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            (hex.to_owned(), name.to_owned())
        })
        .collect()
}

#[test]
fn containerd_tarball_members_and_checksum() {
    let server = FixtureServer::start();
    let up = FakeUpstream::new(&server);
    up.containerd("2.0.4", "v1.2.5");
    for arch in Arch::ALL {
        let path = upstream::containerd_tarball_path("2.0.4", arch);
        let tgz = get(&up.url(&path));
        let sums = String::from_utf8(get(&up.url(&format!("{path}.sha256sum")))).unwrap();
        let name = format!("containerd-static-2.0.4-linux-{}.tar.gz", arch.go_arch());
        assert_eq!(sum_lines(&sums), [(Sha256Digest::of(&tgz).to_string(), name)]);

        let m = members(&tgz);
        assert_eq!(m[0].0, "bin/");
        assert_eq!(m[0].2, tar::EntryType::Directory);
        let files: Vec<&str> = m[1..].iter().map(|e| e.0.as_str()).collect();
        let want: Vec<String> = CONTAINERD_BINARIES.iter().map(|b| format!("bin/{b}")).collect();
        assert_eq!(files, want);
        for (name, mode, kind, data) in &m[1..] {
            assert_eq!((*mode, *kind), (0o755, tar::EntryType::Regular), "{name}");
            let base = name.trim_start_matches("bin/");
            assert!(data.ends_with(upstream::message(base, "2.0.4", arch).as_bytes()));
        }
    }
}

#[test]
fn runc_assets_match_their_checksum_file() {
    let server = FixtureServer::start();
    let up = FakeUpstream::new(&server);
    up.runc("v1.2.5");
    let sums = String::from_utf8(get(&up.url(&upstream::runc_checksum_path("v1.2.5")))).unwrap();
    let lines = sum_lines(&sums);
    let names: Vec<&str> = lines.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["libseccomp-2.5.5.tar.gz", "runc.amd64", "runc.arm64", "runc.tar.xz"]);
    for (hex, name) in &lines {
        let bytes = get(&up.url(&upstream::runc_asset_path("v1.2.5", name)));
        assert_eq!(&Sha256Digest::of(&bytes).to_string(), hex, "{name}");
    }
    for arch in Arch::ALL {
        let exe = up.bytes(&upstream::runc_path("v1.2.5", arch));
        assert!(exe.ends_with(upstream::message("runc", "v1.2.5", arch).as_bytes()));
    }
}

#[test]
fn cni_tarball_members_and_checksum() {
    let server = FixtureServer::start();
    let up = FakeUpstream::new(&server);
    up.cni("v1.6.2");
    for arch in Arch::ALL {
        let path = upstream::cni_tarball_path("v1.6.2", arch);
        let tgz = get(&up.url(&path));
        let sums = String::from_utf8(get(&up.url(&format!("{path}.sha256")))).unwrap();
        let name = format!("cni-plugins-linux-{}-v1.6.2.tgz", arch.go_arch());
        assert_eq!(sum_lines(&sums), [(Sha256Digest::of(&tgz).to_string(), name)]);

        let m = members(&tgz);
        let names: Vec<&str> = m.iter().map(|e| e.0.as_str()).collect();
        let mut want = vec!["./".to_owned()];
        want.extend(CNI_PLUGINS.iter().map(|p| format!("./{p}")));
        want.extend(["./LICENSE".to_owned(), "./README.md".to_owned()]);
        assert_eq!(names, want);
        for (name, mode, _, data) in &m[1..] {
            let plugin = name.trim_start_matches("./");
            if CNI_PLUGINS.contains(&plugin) {
                assert_eq!(*mode, 0o755, "{name}");
                assert!(data.ends_with(upstream::message(plugin, "v1.6.2", arch).as_bytes()));
            } else {
                assert_eq!(*mode, 0o644, "{name}");
            }
        }
    }
}

#[test]
fn two_instances_serve_identical_bytes() {
    let (s1, s2) = (FixtureServer::start(), FixtureServer::start());
    let (a, b) = (all(&s1), all(&s2));
    assert_eq!(a.paths(), b.paths());
    for path in a.paths() {
        assert_eq!(get(&a.url(&path)), get(&b.url(&path)), "{path}");
    }
    // Pin the content too, so an accidental change (e.g. a flate2 upgrade changing its
    // output) is noticed here rather than as mysterious digest churn elsewhere.
    let kubelet = a.digest(&upstream::kubernetes_path("v1.31.3", Arch::X86_64, "kubelet"));
    assert_eq!(
        kubelet,
        Sha256Digest::of(&sysext_tests::tiny_executable(Arch::X86_64, "kubelet v1.31.3 linux/amd64\n"))
    );
}

#[test]
fn corrupt_checksum_keeps_format_but_not_digest() {
    let server = FixtureServer::start();
    let up = all(&server);
    for sum_path in [
        format!("{}.sha256", upstream::kubernetes_path("v1.31.3", Arch::Arm64, "kubelet")),
        upstream::containerd_checksum_path("2.0.4", Arch::X86_64),
        upstream::runc_checksum_path("v1.2.5"),
    ] {
        let before = String::from_utf8(get(&up.url(&sum_path))).unwrap();
        up.corrupt_checksum(&sum_path);
        let after = String::from_utf8(get(&up.url(&sum_path))).unwrap();
        assert_eq!(after.len(), before.len(), "{sum_path}");
        assert_eq!(after.lines().count(), before.lines().count());
        for (b, a) in before.split_whitespace().zip(after.split_whitespace()) {
            if b.len() == 64 {
                assert_ne!(a, b);
                assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            } else {
                assert_eq!(a, b, "file names unchanged");
            }
        }
        assert_eq!(up.bytes(&sum_path), after.as_bytes());
    }
}

#[test]
fn corrupt_artifact_breaks_the_match() {
    let server = FixtureServer::start();
    let up = FakeUpstream::new(&server);
    up.kubernetes("v1.31.3");
    let path = upstream::kubernetes_path("v1.31.3", Arch::X86_64, "kubectl");
    let published = String::from_utf8(up.bytes(&format!("{path}.sha256"))).unwrap();
    let original = up.bytes(&path);
    up.corrupt_artifact(&path);
    let served = get(&up.url(&path));
    assert_eq!(served.len(), original.len());
    assert_ne!(Sha256Digest::of(&served).to_string(), published);
}

#[test]
fn server_faults_compose_with_upstream_content() {
    let server = FixtureServer::start();
    let up = FakeUpstream::new(&server);
    up.cni("v1.6.2");
    let path = upstream::cni_tarball_path("v1.6.2", Arch::X86_64);
    server.set(&path, sysext_tests::Response::ok(up.bytes(&path)).fail_first(1, 503));
    assert_eq!(client().get(up.url(&path)).send().unwrap().status(), 503);
    assert_eq!(get(&up.url(&path)), up.bytes(&path));
    assert_eq!(server.hits(&path), 2);
}
