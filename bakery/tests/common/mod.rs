//! Helpers shared by bakery's integration tests: run the real binary against a fake upstream.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sysext_tests::{Arch, FakeUpstream, FixtureServer};

pub const K8S: &str = "v1.31.3";
pub const CONTAINERD: &str = "2.0.4";
pub const RUNC: &str = "v1.2.5";
pub const CNI: &str = "v1.6.2";

/// Registers every release the tests build.
pub fn upstream(server: &FixtureServer) -> FakeUpstream<'_> {
    let up = FakeUpstream::new(server);
    up.kubernetes(K8S).containerd(CONTAINERD, RUNC).cni(CNI);
    up
}

/// A scratch directory with an output dir and a cache dir.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    /// Files left in the output directory (none if it does not exist).
    pub fn outputs(&self) -> Vec<String> {
        match std::fs::read_dir(self.out()) {
            Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The bakery binary with a clean environment.
pub fn bakery() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bakery"));
    for var in [
        "BAKERY_MIRROR",
        "BAKERY_CACHE",
        "BAKERY_RECIPES",
        "SOURCE_DATE_EPOCH",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `bakery create EXT VERSION --arch ARCH --mirror M --cache C --output O [extra]`.
pub fn create(work: &Work, mirror: &str, ext: &str, version: &str, arch: Arch, extra: &[&str]) -> Output {
    let mut cmd = bakery();
    cmd.args(["create", ext, version, "--arch", arch.as_str(), "--mirror", mirror, "--retries", "1"])
        .arg("--cache")
        .arg(work.cache())
        .arg("--output")
        .arg(work.out())
        .args(extra);
    cmd.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns the image path printed on stdout.
pub fn created(o: &Output) -> PathBuf {
    assert!(o.status.success(), "bakery failed:\nstdout: {}\nstderr: {}", stdout(o), stderr(o));
    PathBuf::from(stdout(o).trim())
}

pub fn sha256(path: &Path) -> String {
    signing::Sha256Digest::of(&std::fs::read(path).unwrap()).to_string()
}
