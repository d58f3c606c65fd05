//! Helpers shared by composer's integration tests: real extension images built once per test
//! binary by bakery against the fake upstream, synthetic disks, and the composer binary.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sysext_tests::disk::{self, DiskSpec, SyntheticDisk, DISK_TOOLS};
use sysext_tests::harness::Need;
use sysext_tests::sandbox::{FLATCAR_OS_RELEASE, UBUNTU_OS_RELEASE};
use sysext_tests::{Arch, FakeUpstream, FixtureServer};

pub const K8S: &str = "v1.31.3";
pub const CONTAINERD: &str = "2.0.4";
pub const RUNC: &str = "v1.2.5";
pub const CNI: &str = "v1.6.2";

/// Extension images built by bakery.
pub struct Extensions {
    pub arch: Arch,
    pub kubernetes: PathBuf,
    pub containerd: PathBuf,
    pub cni: PathBuf,
    /// kubernetes for the other architecture.
    pub foreign_kubernetes: PathBuf,
    /// kubernetes built with `--os ubuntu:24.04` (ID=ubuntu, VERSION_ID=24.04).
    pub ubuntu_kubernetes: PathBuf,
}

impl Extensions {
    pub fn all(&self) -> [&Path; 3] {
        [&self.kubernetes, &self.containerd, &self.cni]
    }
}

fn bake(dir: &Path, mirror: &str, ext: &str, version: &str, arch: Arch, os: &str) -> PathBuf {
    let out = dir.join(format!("{arch}-{os}").replace(':', "_"));
    let code = bakery::cli::main_from_iter([
        "bakery",
        "create",
        ext,
        version,
        "--arch",
        arch.as_str(),
        "--os",
        os,
        "--mirror",
        mirror,
        "--retries",
        "1",
        "--cache",
        dir.join("cache").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, std::process::ExitCode::SUCCESS, "bakery create {ext} {version} --arch {arch} --os {os} failed");
    out.join(format!("{ext}-{version}-{arch}.raw"))
}

/// The host architecture (tests that call this declare [`Need::SupportedHost`]).
pub fn host_arch() -> Arch {
    Arch::host().expect("the harness runs this test only on x86-64 and arm64 hosts")
}

/// Builds the extensions once per test binary (they are reproducible, so rebuilding into the
/// same directory with --force is harmless).
pub fn extensions() -> &'static Extensions {
    static BUILT: OnceLock<Extensions> = OnceLock::new();
    BUILT.get_or_init(|| {
        let arch = Arch::host().expect("supported host architecture");
        let other = Arch::ALL.into_iter().find(|a| *a != arch).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "composer-extensions-{}",
            std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy()
        ));
        let server = FixtureServer::start();
        let up = FakeUpstream::new(&server);
        up.kubernetes(K8S).containerd(CONTAINERD, RUNC).cni(CNI);
        let m = up.mirror();
        Extensions {
            arch,
            kubernetes: bake(&dir, &m, "kubernetes", K8S, arch, "_any"),
            containerd: bake(&dir, &m, "containerd", CONTAINERD, arch, "_any"),
            cni: bake(&dir, &m, "cni", CNI, arch, "_any"),
            foreign_kubernetes: bake(&dir, &m, "kubernetes", K8S, other, "_any"),
            ubuntu_kubernetes: bake(&dir, &m, "kubernetes", K8S, arch, "ubuntu:24.04"),
        }
    })
}

/// What most tests start from: the extensions and a scratch directory.
pub struct Case {
    pub exts: &'static Extensions,
    pub work: tempfile::TempDir,
}

/// The extensions and a scratch directory (tests that call this declare [`disk_needs`]).
pub fn case() -> Case {
    Case { exts: extensions(), work: tempfile::tempdir().unwrap() }
}

/// What composing synthetic disks needs: the disk tools, e2fsprogs and a host architecture
/// the extensions are built for.
pub fn disk_needs() -> Vec<Need> {
    DISK_TOOLS.iter().chain(&["debugfs", "e2fsck"]).map(|t| Need::Tool(t)).chain([Need::SupportedHost]).collect()
}

pub fn flatcar_disk(dir: &Path) -> SyntheticDisk {
    disk::flatcar(dir, &DiskSpec::new(FLATCAR_OS_RELEASE, Arch::host().unwrap()))
}

pub fn ubuntu_disk(dir: &Path) -> SyntheticDisk {
    disk::ubuntu(dir, &DiskSpec::new(UBUNTU_OS_RELEASE, Arch::host().unwrap()))
}

/// The composer binary with a clean environment.
pub fn composer() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_composer"));
    cmd.env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// `composer compose --image IN --out OUT -e …` plus `extra`.
pub fn compose(image: &Path, out: &Path, exts: &[&Path], extra: &[&str]) -> Output {
    let mut cmd = composer();
    cmd.arg("compose").arg("--image").arg(image).arg("--out").arg(out);
    for e in exts {
        cmd.arg("-e").arg(e);
    }
    cmd.args(extra).output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "composer failed:\nstdout: {}\nstderr: {}", stdout(o), stderr(o));
}

pub fn sha256(path: &Path) -> String {
    signing::Sha256Digest::of_reader(std::fs::File::open(path).unwrap()).unwrap().to_string()
}

/// Runs a read-only debugfs request against the filesystem at `offset` in `image`.
pub fn debugfs(image: &Path, offset: u64, request: &str) -> String {
    let out = Command::new("debugfs")
        .env("DEBUGFS_PAGER", "__none__")
        .arg("-R")
        .arg(request)
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Dumps a file out of the filesystem at `offset` into `dest`.
pub fn dump(image: &Path, offset: u64, path: &str, dest: &Path) {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {path} {}", dest.display()))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    assert!(dest.exists(), "debugfs could not dump {path}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Asserts a refused run: non-zero exit, the message contains every `needle`, OUT does not
/// exist, no scratch files are left beside it, and the input is byte-identical.
pub fn assert_refused(o: &Output, out: &Path, input: &Path, input_sha: &str, needles: &[&str]) {
    assert!(!o.status.success(), "composer succeeded but should have refused:\n{}", stderr(o));
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "error does not mention '{n}':\n{err}");
    }
    assert!(!out.exists(), "{} exists after a refused run", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".composer-"))
        .collect();
    assert!(leftovers.is_empty(), "scratch files left: {leftovers:?}");
    assert_eq!(sha256(input), input_sha, "the input image changed");
}

/// Publishes the test extensions into a signed release directory; returns it and the key pair.
pub fn release(dir: &Path, exts: &Extensions) -> (std::path::PathBuf, std::path::PathBuf) {
    let keys = dir.join("keys");
    signing::keygen(&keys).unwrap();
    let key = signing::PrivateKey::read_pem(&keys.join("private.pem")).unwrap();
    let images: Vec<_> = exts.all().iter().map(|p| bakery::release::new_image(p).unwrap()).collect();
    let release = dir.join("release");
    let opts = release_index::publish::PublishOptions {
        release_dir: &release,
        key: &key,
        base_url: Some("https://sysext.example.org/ext/".parse().unwrap()),
        valid_for: std::time::Duration::from_secs(86_400),
        now: release_index::timestamp::Timestamp::now(),
        keep_generations: 3,
        fail_after: None,
    };
    release_index::publish::publish(&images, &opts).unwrap();
    (release, keys.join("public.pem"))
}
