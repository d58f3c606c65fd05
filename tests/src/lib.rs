//! Shared test support for bakery's and composer's integration tests.
//!
//! * [`FixtureServer`] — an in-process HTTP/1.1 server with fault injection, so no test ever
//!   reaches the internet.
//! * [`FakeUpstream`] — deterministic fake Kubernetes/containerd/runc/CNI releases served at
//!   their real URL paths, for use as the product's `--mirror`.
//! * [`tiny_executable`] — minimal static ELF executables for x86-64 and arm64.
//! * [`TarGz`] — reproducible `.tar.gz` archives, including hostile ones.
//! * [`MergeSandbox`] — the real `systemd-sysext merge` in a private mount namespace.
//! * [`gpg`] — GnuPG's `gpgv` and `gpg --show-keys` as the independent OpenPGP consumer.
//! * [`disk`] — small synthetic Flatcar- and Ubuntu-layout disk images, built without root.
//! * [`registry`] — a real OCI registry (Debian's `docker-registry`) on loopback, plain or
//!   with TLS and basic authentication.
//! * [`harness`] — runs tests that need root or a tool, reporting them as ignored (or, in CI,
//!   failed) where they cannot run; [`is_root`].

pub mod corpus;
pub mod disk;
pub mod elf;
pub mod gpg;
pub mod harness;
pub mod registry;
pub mod sandbox;
pub mod server;
pub mod tarball;
pub mod upstream;
pub mod vm;

pub use elf::tiny_executable;
pub use registry::{TestRegistry, REGISTRY_TOOLS};
pub use sandbox::{MergeOutput, MergeSandbox, MERGE_TOOLS};
pub use server::{FixtureServer, Response};
pub use sysext_model::Arch;
pub use tarball::{EntryType, TarGz};
pub use upstream::FakeUpstream;

/// Environment variable that turns every skip (missing root, missing tool) into a failure, for
/// CI, which installs every tool and runs as root: there a skip means a check silently did not
/// run.
pub const NO_SKIP_ENV: &str = "SYSEXT_TESTS_NO_SKIP";

/// Whether this process runs with effective UID 0.
///
/// Reads the `Uid:` line of `/proc/self/status` (real, effective, saved, fs) rather than calling
/// `geteuid`, which would need `unsafe` or a libc wrapper crate.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(effective_uid).is_some_and(|uid| uid == 0)
}

/// The effective UID from the text of `/proc/<pid>/status`.
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Seeded xorshift noise: incompressible, and the same on every run.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_effective_uid() {
        let status = "Name:\tx\nUid:\t1000\t0\t1000\t1000\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }
}
