//! Fake upstream releases, served in the real URL layouts through a [`FixtureServer`].
//!
//! The product downloads from dl.k8s.io, github.com and raw.githubusercontent.com, and supports
//! `--mirror BASE`, which swaps the scheme and host of every upstream URL for BASE and keeps the
//! path. One fixture server therefore stands in for all upstreams at once: it serves each
//! artifact at exactly the path the real host uses (see the `*_path` functions), so tests
//! exercise the real recipes against `--mirror <FakeUpstream::mirror()>`.
//!
//! Every artifact is deterministic — tiny ELF executables printing `"<name> <version>
//! linux/<goarch>\n"` (see [`message`]) packed by the reproducible [`TarGz`] — so two instances
//! serve identical bytes and digests can be compared across runs.
//!
//! Negative tests: [`FakeUpstream::corrupt_checksum`] and [`FakeUpstream::corrupt_artifact`]
//! cover digest mismatches; for transport faults use the server directly, e.g.
//! `server.set(&path, Response::ok(up.bytes(&path)).truncate_after(100))`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use signing::Sha256Digest;
use sysext_model::Arch;

use crate::elf::tiny_executable;
use crate::server::{FixtureServer, Response};
use crate::tarball::TarGz;

/// The Kubernetes binaries served for every version, in this order.
pub const KUBERNETES_BINARIES: [&str; 3] = ["kubelet", "kubeadm", "kubectl"];
/// Members of `containerd-static-*.tar.gz` under `bin/`.
pub const CONTAINERD_BINARIES: [&str; 4] = ["containerd", "containerd-shim-runc-v2", "containerd-stress", "ctr"];
/// The plugins in `cni-plugins-linux-*.tgz` (each as `./<name>`).
pub const CNI_PLUGINS: [&str; 18] = [
    "bandwidth",
    "bridge",
    "dhcp",
    "dummy",
    "firewall",
    "host-device",
    "host-local",
    "ipvlan",
    "loopback",
    "macvlan",
    "portmap",
    "ptp",
    "sbr",
    "static",
    "tap",
    "tuning",
    "vlan",
    "vrf",
];
/// The libseccomp source tarball that runc's checksum file lists besides the binaries.
pub const RUNC_LIBSECCOMP: &str = "libseccomp-2.5.5.tar.gz";

/// What the fake executable `name` of `version` for `arch` prints, e.g.
/// `"kubelet v1.31.3 linux/amd64\n"`. `version` is used as spelled by the caller of
/// [`FakeUpstream`]'s registration methods after normalisation (`v1.31.3`, `2.0.4`, ...).
pub fn message(name: &str, version: &str, arch: Arch) -> String {
    format!("{name} {version} linux/{}\n", arch.go_arch())
}

/// A shell line (for [`crate::MergeSandbox::run`]) that fails unless the merged `name` runs
/// and prints its [`message`].
pub fn runs_check(name: &str, version: &str, arch: Arch) -> String {
    format!(
        "test \"$({name})\" = '{}' || {{ echo 'wrong output from {name}' >&2; exit 1; }}\n",
        message(name, version, arch).trim_end()
    )
}

/// `v1.2.3` for both `1.2.3` and `v1.2.3`: Kubernetes, runc and CNI tag with a `v`.
fn with_v(version: &str) -> String {
    format!("v{}", version.trim_start_matches('v'))
}

/// `1.2.3` for both: containerd's file names and URL use the bare number after a `v` tag.
fn without_v(version: &str) -> &str {
    version.trim_start_matches('v')
}

/// `/{v}/bin/linux/{goarch}/{binary}` on dl.k8s.io. Append `.sha256` for the digest file.
pub fn kubernetes_path(version: &str, arch: Arch, binary: &str) -> String {
    format!("/{}/bin/linux/{}/{binary}", with_v(version), arch.go_arch())
}

/// The containerd static release tarball on github.com.
pub fn containerd_tarball_path(version: &str, arch: Arch) -> String {
    let v = without_v(version);
    format!("/containerd/containerd/releases/download/v{v}/containerd-static-{v}-linux-{}.tar.gz", arch.go_arch())
}

/// The `<hex>  <file>\n` checksum file next to the containerd tarball.
pub fn containerd_checksum_path(version: &str, arch: Arch) -> String {
    format!("{}.sha256sum", containerd_tarball_path(version, arch))
}

/// containerd's runc pin on raw.githubusercontent.com (contains e.g. `v1.2.5\n`).
pub fn runc_version_path(containerd_version: &str) -> String {
    format!("/containerd/containerd/v{}/script/setup/runc-version", without_v(containerd_version))
}

/// A runc release asset on github.com (`runc.amd64`, `runc.sha256sum`, ...).
pub fn runc_asset_path(runc_version: &str, asset: &str) -> String {
    format!("/opencontainers/runc/releases/download/{}/{asset}", with_v(runc_version))
}

/// The runc binary for `arch`.
pub fn runc_path(runc_version: &str, arch: Arch) -> String {
    runc_asset_path(runc_version, &format!("runc.{}", arch.go_arch()))
}

/// runc's single checksum file covering all its assets.
pub fn runc_checksum_path(runc_version: &str) -> String {
    runc_asset_path(runc_version, "runc.sha256sum")
}

/// The CNI plugins tarball on github.com.
pub fn cni_tarball_path(version: &str, arch: Arch) -> String {
    let v = with_v(version);
    format!("/containernetworking/plugins/releases/download/{v}/cni-plugins-linux-{}-{v}.tgz", arch.go_arch())
}

/// The `<hex>  <file>\n` checksum file next to the CNI tarball.
pub fn cni_checksum_path(version: &str, arch: Arch) -> String {
    format!("{}.sha256", cni_tarball_path(version, arch))
}

/// The file-name part of a path.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A `sha256sum`-style line: digest, two spaces, file name, newline.
fn sum_line(bytes: &[u8], name: &str) -> String {
    format!("{}  {name}\n", Sha256Digest::of(bytes))
}

/// Fake Kubernetes, containerd, runc and CNI releases on a [`FixtureServer`]. See the module
/// docs. Registration methods take `&self` and chain:
///
/// ```
/// use sysext_tests::{FakeUpstream, FixtureServer};
/// let server = FixtureServer::start();
/// let up = FakeUpstream::new(&server);
/// up.kubernetes("v1.31.3").containerd("2.0.4", "v1.2.5").cni("v1.6.2");
/// assert_eq!(up.mirror(), server.url());
/// ```
#[derive(Debug)]
pub struct FakeUpstream<'s> {
    server: &'s FixtureServer,
    /// What is currently served, by path; kept in step with the server's routes.
    artifacts: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl<'s> FakeUpstream<'s> {
    /// Serves nothing yet; register releases with the methods below.
    pub fn new(server: &'s FixtureServer) -> Self {
        FakeUpstream { server, artifacts: Mutex::new(BTreeMap::new()) }
    }

    /// The `--mirror` base: the server's URL.
    pub fn mirror(&self) -> String {
        self.server.url()
    }

    /// The full mirror URL of `path`.
    pub fn url(&self, path: &str) -> String {
        self.server.url_for(path)
    }

    /// The server the releases are served from.
    pub fn server(&self) -> &'s FixtureServer {
        self.server
    }

    /// Serves `bytes` at `path` (`200 OK`) and remembers them for [`FakeUpstream::bytes`].
    pub fn put(&self, path: &str, bytes: impl Into<Vec<u8>>) -> &Self {
        let bytes = bytes.into();
        self.server.set(path, Response::ok(bytes.clone()));
        self.lock().insert(path.to_owned(), bytes);
        self
    }

    /// Kubernetes `version` (`v1.31.3`): kubelet, kubeadm, kubectl and their `.sha256` files
    /// (bare 64-char hex digest, no newline, as dl.k8s.io serves them), for both arches.
    pub fn kubernetes(&self, version: &str) -> &Self {
        let v = with_v(version);
        for arch in Arch::ALL {
            for binary in KUBERNETES_BINARIES {
                let path = kubernetes_path(&v, arch, binary);
                let exe = tiny_executable(arch, &message(binary, &v, arch));
                self.put(&format!("{path}.sha256"), Sha256Digest::of(&exe).to_string());
                self.put(&path, exe);
            }
        }
        self
    }

    /// containerd `version` (`2.0.4`) static tarballs with their `.sha256sum` files, the
    /// `runc-version` pin file containing `runc_version`, and that runc release
    /// ([`FakeUpstream::runc`]), for both arches.
    pub fn containerd(&self, version: &str, runc_version: &str) -> &Self {
        self.containerd_with(version, runc_version, |binary, arch| {
            tiny_executable(arch, &message(binary, without_v(version), arch))
        })
    }

    /// Like [`FakeUpstream::containerd`], with the members of `bin/` made by `binary(name,
    /// arch)` (a stand-in daemon that must keep running, say).
    pub fn containerd_with(&self, version: &str, runc_version: &str, binary: impl Fn(&str, Arch) -> Vec<u8>) -> &Self {
        let v = without_v(version);
        for arch in Arch::ALL {
            let mut tar = TarGz::new().dir("bin/", 0o755);
            for name in CONTAINERD_BINARIES {
                tar = tar.file(&format!("bin/{name}"), 0o755, binary(name, arch));
            }
            let tgz = tar.build();
            let path = containerd_tarball_path(v, arch);
            self.put(&containerd_checksum_path(v, arch), sum_line(&tgz, file_name(&path)));
            self.put(&path, tgz);
        }
        self.put(&runc_version_path(v), format!("{}\n", with_v(runc_version)));
        self.runc(runc_version)
    }

    /// runc `version` (`v1.2.5`): `runc.amd64`, `runc.arm64`, the source tarball, the libseccomp
    /// tarball and `runc.sha256sum` listing all four, sorted like the real file.
    pub fn runc(&self, version: &str) -> &Self {
        let v = with_v(version);
        let mut assets: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for arch in Arch::ALL {
            let name = format!("runc.{}", arch.go_arch());
            assets.insert(name, tiny_executable(arch, &message("runc", &v, arch)));
        }
        // Contents are irrelevant to the product (it never fetches them); any fixed bytes do.
        assets.insert("runc.tar.xz".into(), format!("fake runc {v} source\n").into_bytes());
        assets.insert(RUNC_LIBSECCOMP.into(), b"fake libseccomp 2.5.5 source\n".to_vec());
        let sums: String = assets.iter().map(|(name, bytes)| sum_line(bytes, name)).collect();
        for (name, bytes) in assets {
            self.put(&runc_asset_path(&v, &name), bytes);
        }
        self.put(&runc_checksum_path(&v), sums)
    }

    /// CNI plugins `version` (`v1.6.2`) tarballs with their `.sha256` files, for both arches.
    pub fn cni(&self, version: &str) -> &Self {
        let v = with_v(version);
        for arch in Arch::ALL {
            let mut tar = TarGz::new().dir("./", 0o755);
            for plugin in CNI_PLUGINS {
                let exe = tiny_executable(arch, &message(plugin, &v, arch));
                tar = tar.file(&format!("./{plugin}"), 0o755, exe);
            }
            let tgz = tar
                .file("./LICENSE", 0o644, "Apache License\nVersion 2.0, January 2004\n")
                .file("./README.md", 0o644, format!("Fake CNI plugins {v} for tests.\n"))
                .build();
            let path = cni_tarball_path(&v, arch);
            self.put(&cni_checksum_path(&v, arch), sum_line(&tgz, file_name(&path)));
            self.put(&path, tgz);
        }
        self
    }

    /// The bytes currently served at `path`.
    ///
    /// # Panics
    /// If nothing was registered there (the message lists what was).
    pub fn bytes(&self, path: &str) -> Vec<u8> {
        let artifacts = self.lock();
        match artifacts.get(path) {
            Some(bytes) => bytes.clone(),
            None => panic!(
                "FakeUpstream serves nothing at {path}; it serves:\n  {}",
                artifacts.keys().cloned().collect::<Vec<_>>().join("\n  ")
            ),
        }
    }

    /// The SHA-256 of what is currently served at `path` (panics like [`FakeUpstream::bytes`]).
    pub fn digest(&self, path: &str) -> Sha256Digest {
        Sha256Digest::of(&self.bytes(path))
    }

    /// Every registered path, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Rewrites the checksum file at `path` so every digest in it is wrong but well-formed
    /// (64 lowercase hex characters, file names and layout unchanged). The artifacts keep
    /// their bytes, so a verifying download must fail.
    pub fn corrupt_checksum(&self, path: &str) -> &Self {
        let text = String::from_utf8(self.bytes(path)).expect("checksum files are text");
        let corrupted: String = text
            .split_inclusive(|c: char| c.is_whitespace())
            .map(|token| {
                let word = token.trim_end();
                if word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()) {
                    // A digest of the digest: different, deterministic, well-formed.
                    let wrong = Sha256Digest::of(word.as_bytes()).to_string();
                    format!("{wrong}{}", &token[word.len()..])
                } else {
                    token.to_owned()
                }
            })
            .collect();
        assert_ne!(corrupted, text, "no digest found in {path}");
        self.put(path, corrupted)
    }

    /// Serves the artifact at `path` with its last byte flipped: same length, different
    /// digest, so it no longer matches its checksum file.
    pub fn corrupt_artifact(&self, path: &str) -> &Self {
        let mut bytes = self.bytes(path);
        let last = bytes.last_mut().expect("artifact is not empty");
        *last ^= 0x01;
        self.put(path, bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.artifacts.lock().unwrap_or_else(|e| e.into_inner())
    }
}
